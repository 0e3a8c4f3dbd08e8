"""Configuration (b): SmolLM2-135M-Instruct and a reward model of the same architecture and weights.

The language model is `hf_rgtg.load_default_lm()`; the reward model is `AutoModelForPrefixReward.from_pretrained`
on the same converted checkpoint, with a random head. The prompts are chat-template prompts of exactly the
requested number of real tokens.
"""

from __future__ import annotations

import torch
from harness.configuration import Config, Setup, param_count, vocab_reward_model

from hf_rgtg import AutoModelForPrefixReward, load_default_lm
from hf_rgtg.defaults import default_lm_path

PROMPT_QUESTIONS = [
    "Explain in simple words why the sky looks blue during the day and red at sunset, with an example.",
    "Write a short poem about a lighthouse keeper who waits every night for a ship that never arrives.",
    "What are three practical ways to reduce the amount of food a family throws away every single week?",
    "Summarize the main causes of the French Revolution for a student preparing for a history exam.",
    "How do I make a simple tomato sauce for pasta at home with only a few fresh ingredients?",
    "Give me advice on how to prepare for a job interview at a small software company next Monday.",
    "Describe how a bicycle gear system works and why it makes climbing hills so much easier.",
    "Why do cats like to sleep in cardboard boxes, and is it a good idea to let them do that?",
]


def _chat_prompt(tokenizer, question: str, length: int) -> list[int]:
    """A chat-template prompt of exactly `length` real tokens, the user's question cut to fit."""
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": question},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before, after = text.split(question)
    head = tokenizer(before, add_special_tokens=False).input_ids
    tail = tokenizer(after, add_special_tokens=False).input_ids
    body = tokenizer(question, add_special_tokens=False).input_ids
    room = length - len(head) - len(tail)
    if room < 1:
        raise RuntimeError(f"A chat prompt needs more than {length} tokens.")
    while len(body) < room:
        body = body + body
    return head + body[:room] + tail


def setup_b(max_batch: int, prompt_length: int, max_new_tokens: int, seed: int) -> Setup:
    lm, tokenizer = load_default_lm()
    torch.manual_seed(seed + 1)
    path = default_lm_path()
    rm = AutoModelForPrefixReward.from_pretrained(path).eval()
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = [
        _chat_prompt(tokenizer, PROMPT_QUESTIONS[i % len(PROMPT_QUESTIONS)], prompt_length)
        for i in range(max_batch)
    ]
    # Both models map their weights from the safetensors file, and a page comes in when it is first read: the LM's
    # tied embedding is read whole by its head at every step, the RM's only row by row, as new tokens appear. Read
    # every weight once, so that the RSS of a run measures what decoding allocates, not weights paging in.
    for model in (lm, rm):
        with torch.no_grad():
            for tensor in (*model.parameters(), *model.buffers()):
                tensor.sum()
    setup = Setup("b", lm, rm, torch.tensor(rows), eos, pad, [], lm_tokenizer=tokenizer)
    setup.reward_models["vocab"] = vocab_reward_model(lm)
    setup.description = [
        f"LM: SmolLM2-135M-Instruct via `load_default_lm()` ({type(lm).__name__}, {param_count(lm)}, "
        f"{lm.config.num_hidden_layers} layers, hidden {lm.config.hidden_size}, "
        f"{lm.config.num_key_value_heads} KV heads, vocab {lm.config.vocab_size}).",
        f"RM: `AutoModelForPrefixReward.from_pretrained(default_lm_path())`: the same backbone and weights, a "
        f"random linear head ({param_count(rm)}). An all-token RM: a copy of the LM's backbone with a full V × d "
        "head (vocab); a factorised head over the LM's own backbone (vocab-backbone).",
        f"Prompts: chat template (short system message + a question cut to fit), exactly {prompt_length} real "
        f"tokens per row, {len(PROMPT_QUESTIONS)} different questions.",
        f"attn_implementation: LM {lm.config._attn_implementation}, RM {rm.config.text_config._attn_implementation}.",
        "No reward model with another tokenizer: the bridged, text and encoder paths run on (a), where their RMs "
        "have the shape of the same-vocabulary RM they are compared with (beside SmolLM2, a small RM with another "
        "tokenizer would compare a 5 M-parameter RM with the 135 M one of the fast path).",
    ]
    positions = rm.max_positions
    if positions is not None and prompt_length + max_new_tokens > positions:
        raise RuntimeError(f"(b) has {positions} positions, fewer than the prompt plus the new tokens.")
    return setup


CONFIG = Config("(b) SmolLM2-135M-Instruct LM + same-size RM", setup_b)
