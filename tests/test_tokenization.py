"""Tokenizer helpers (hf_rgtg/tokenization.py): the pad-token fallback, and prompts encoded for `generate()`."""

import logging

import pytest
import torch
from conftest import CHAT_TEMPLATE, build_tokenizer
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from hf_rgtg import encode_prompt, ensure_pad_token


def test_missing_pad_token_falls_back_to_eos_with_info_log(caplog):
    tokenizer = build_tokenizer()
    assert tokenizer.pad_token is None
    with caplog.at_level(logging.INFO, logger="hf_rgtg"):
        assert ensure_pad_token(tokenizer) is tokenizer
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "using its EOS token" in caplog.text
    batch = tokenizer(["hi", "a longer one"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2


def test_tokenizer_without_pad_or_eos_is_rejected():
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, unk_token="a")))
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token.*pad_token"):
        ensure_pad_token(tokenizer)


def chat_tokenizer():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def test_the_prompt_becomes_the_user_message_of_the_chat_template():
    tokenizer = chat_tokenizer()
    inputs = encode_prompt(tokenizer, "hello there")
    expected = tokenizer("<|endoftext|>user: hello there\nassistant:", return_tensors="pt")["input_ids"]
    assert torch.equal(inputs["input_ids"], expected)
    assert torch.equal(inputs["attention_mask"], torch.ones_like(expected))
    assert set(inputs) == {"input_ids", "attention_mask"}


def test_without_a_chat_template_or_with_it_disabled_the_prompt_is_plain_text():
    plain = build_tokenizer()("hello there", return_tensors="pt")["input_ids"]
    for tokenizer, use_chat_template in ((build_tokenizer(), True), (chat_tokenizer(), False)):
        inputs = encode_prompt(tokenizer, "hello there", use_chat_template=use_chat_template)
        assert torch.equal(inputs["input_ids"], plain)
        assert inputs["attention_mask"].shape == plain.shape


def test_a_prompt_empty_after_tokenization_is_refused():
    with pytest.raises(
        ValueError, match="the prompt is empty after tokenization; give some text to continue"
    ):
        encode_prompt(build_tokenizer(), "")
