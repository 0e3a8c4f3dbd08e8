"""Tokenizer helpers shared by scoring, training and the command line: a pad token for batches, a prompt
encoded for `generate()` (as a chat-template user message when the tokenizer has a template), and the EOS and pad
ids of guided decoding."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from .validation import checked_token_id, checked_token_ids

logger = logging.getLogger(__name__)

#: A prompt: text, or chat messages (`{"role": ..., "content": ...}` dictionaries).
Prompt = str | Sequence[Mapping[str, str]]


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give `tokenizer` a pad token if it has none, falling back to its EOS token.

    Batched scoring and training pad sequences; many causal-LM tokenizers (GPT-2, Llama) ship without a pad token.
    Padding positions are always masked out, so reusing EOS is safe. The tokenizer is changed in place and
    returned.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the tokenizer to complete.

    Raises:
        `ValueError`: if the tokenizer has neither a pad token nor an EOS token.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg import ensure_pad_token

    >>> tokenizer = PreTrainedTokenizerFast(
    ...     tokenizer_object=Tokenizer(models.WordLevel({"hi": 0, "</s>": 1}, unk_token="hi")), eos_token="</s>"
    ... )
    >>> ensure_pad_token(tokenizer).pad_token
    '</s>'
    ```
    """
    if tokenizer.pad_token_id is not None:
        return tokenizer
    if tokenizer.eos_token is None:
        raise ValueError(
            f"The tokenizer ({type(tokenizer).__name__}) has neither a pad token nor an EOS token, so batches "
            "cannot be padded. Set one before use, e.g. `tokenizer.add_special_tokens({'pad_token': '<pad>'})` "
            "(and resize the model's embeddings), or `tokenizer.pad_token = <an existing token>`."
        )
    logger.info(f"The tokenizer has no pad token; using its EOS token {tokenizer.eos_token!r} for padding.")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, *, use_chat_template: bool = True
) -> dict[str, torch.Tensor]:
    """Tokenize one prompt for `generate()`: as the user message of the tokenizer's chat template, followed by the
    template's generation prompt, when it has a template and `use_chat_template`; as plain text otherwise.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the language model's tokenizer.
        prompt (`str`): the prompt, or the user's message.
        use_chat_template (`bool`, *optional*, defaults to `True`): `False` tokenizes the prompt as plain text even
            when the tokenizer has a chat template.

    Returns:
        `dict[str, torch.Tensor]`: `input_ids` and `attention_mask`, each of shape `(1, prompt_length)`, to pass to
        `model.generate(**inputs)`.

    Raises:
        `ValueError`: if the prompt is empty after tokenization.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg import encode_prompt

    >>> vocab = {word: i for i, word in enumerate(["[UNK]", "user:", "assistant:", "hello", "there"])}
    >>> backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    >>> backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    >>> tokenizer.chat_template = (
    ...     "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
    ...     "{% if add_generation_prompt %}assistant:{% endif %}"
    ... )
    >>> encode_prompt(tokenizer, "hello there")["input_ids"].tolist()
    [[1, 3, 4, 2]]
    >>> encode_prompt(tokenizer, "hello there", use_chat_template=False)["input_ids"].tolist()
    [[3, 4]]
    ```
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        encoding = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        encoding = tokenizer(prompt, return_tensors="pt")
    inputs = {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]}
    if inputs["input_ids"].shape[1] == 0:
        raise ValueError("the prompt is empty after tokenization; give some text to continue")
    return inputs


def check_tokenizer(tokenizer: object) -> None:
    """Refuse a `tokenizer` argument that is neither `None` nor a transformers tokenizer."""
    if tokenizer is not None and not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(
            f"`tokenizer` has to be the language model's tokenizer (a PreTrainedTokenizerBase), got "
            f"{type(tokenizer).__name__} ({tokenizer!r}). Give ids directly with `eos_token_id=`/`pad_token_id=`."
        )


def special_token_ids(
    tokenizer: PreTrainedTokenizerBase | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    default_eos_token_id: int | Sequence[int] | None = None,
) -> tuple[list[int] | None, int | None]:
    """The EOS ids and the pad id of reward-guided decoding, checked: the ones given, else the tokenizer's (its pad
    token falling back to its EOS token), else `default_eos_token_id` for EOS (the reward model's backbone's).

    Args:
        tokenizer (`PreTrainedTokenizerBase`, *optional*): the language model's tokenizer.
        eos_token_id (`int` or list of `int`, *optional*): EOS ids given by the caller.
        pad_token_id (`int`, *optional*): the pad id given by the caller.
        default_eos_token_id (`int` or list of `int`, *optional*): the EOS ids to assume without either.

    Examples:

    ```python
    >>> from hf_rgtg.tokenization import special_token_ids
    >>> special_token_ids(eos_token_id=2, default_eos_token_id=0)
    ([2], None)
    ```
    """
    check_tokenizer(tokenizer)
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id if tokenizer is not None else default_eos_token_id
    if pad_token_id is None and tokenizer is not None:
        pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
    return checked_token_ids("eos_token_id", eos_token_id), checked_token_id("pad_token_id", pad_token_id)


def reward_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, index: int = 0) -> list[int]:
    """A prompt's token ids as a reward model reads them, the one rule training, scoring and guided decoding share:
    plain text with the tokenizer's special tokens (`[CLS] prompt [SEP]` for BERT), or chat messages through the
    chat template with its generation prompt. The response's tokens follow, without special tokens.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the reward model's tokenizer.
        prompt (`str` or list of chat messages): the prompt.
        index (`int`, *optional*, defaults to 0): the prompt's index, for the error message.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg.tokenization import reward_prompt_ids

    >>> backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "there": 2}, unk_token="[UNK]"))
    >>> backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    >>> reward_prompt_ids(PreTrainedTokenizerFast(tokenizer_object=backend), "hello there")
    [1, 2]
    ```
    """
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"Prompt {index} is a list of chat messages, but the tokenizer has no chat template. Give the prompt as "
            "text, or set `tokenizer.chat_template`."
        )
    text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def vocabulary_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what a tokenizer's ids mean: its token-to-id map (added tokens included) and which tokens are
    special. Two tokenizers with the same fingerprint give every id the same token; the same vocabulary *size*
    says nothing of the kind.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg.tokenization import vocabulary_fingerprint

    >>> def word_level(vocab):
    ...     return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="a")))
    >>> vocabulary_fingerprint(word_level({"a": 0, "b": 1})) == vocabulary_fingerprint(word_level({"a": 0, "b": 1}))
    True
    >>> vocabulary_fingerprint(word_level({"a": 0, "b": 1})) == vocabulary_fingerprint(word_level({"b": 0, "a": 1}))
    False
    ```
    """
    special = {
        str(token): tokenizer.convert_tokens_to_ids(str(token)) for token in tokenizer.all_special_tokens
    }
    content = json.dumps(
        {
            "vocab": sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]),
            "special": sorted(special.items()),
        },
        ensure_ascii=False,
    )
    return hashlib.sha256(content.encode()).hexdigest()


__all__ = [
    "Prompt",
    "check_tokenizer",
    "encode_prompt",
    "ensure_pad_token",
    "reward_prompt_ids",
    "special_token_ids",
    "vocabulary_fingerprint",
]
