"""Model cards of prefix reward models, written by `save_pretrained` and pushed by `push_to_hub`, and the
prefix-accuracy table they show (which `hf-rgtg eval-rm` and `hf-rgtg train` print too)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .configuration import PrefixRewardConfig, is_incrementally_scorable

LIBRARY_NAME = "hf_rgtg"
TAGS = ["reward-model", "prefix-reward-model", "hf_rgtg"]
#: The rows of the prefix-accuracy table: the quarters of the response by relative position, then the whole response.
BUCKET_ORDER = ("0-25%", "25-50%", "50-75%", "75-100%", "full")

#: A Hub model id: `org/name` (a bare canonical name such as `gpt2` cannot be told from a local folder).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
#: The prompt and the response the card's usage snippet scores.
EXAMPLE_PROMPT = "How was your day?"
EXAMPLE_RESPONSE = "Lovely, thank you for asking!"


def accuracy_table(accuracy: Mapping[str, float], counts: Mapping[str, int] | None = None) -> str:
    """The prefix-accuracy table in Markdown, as model cards and [`PrefixAccuracy.to_markdown`] show it.

    One row per bucket of `BUCKET_ORDER` (the quarters of the response by relative position, then the whole
    response) that `accuracy` has, in that order; other keys are left out.

    Args:
        accuracy (`Mapping[str, float]`): the accuracy of each bucket, e.g. [`PrefixAccuracy.accuracy`].
        counts (`Mapping[str, int]`, *optional*): how many prefix pairs each figure rests on; a bucket without a
            count gets an empty cell.

    Examples:

    ```python
    >>> from hf_rgtg.hub import accuracy_table
    >>> print(accuracy_table({"0-25%": 0.61, "full": 0.9}, {"0-25%": 120, "full": 30}))
    | prefix of the response | accuracy | prefix pairs |
    | --- | --- | --- |
    | 0-25% | 0.610 | 120 |
    | full | 0.900 | 30 |
    ```
    """
    rows = ["| prefix of the response | accuracy | prefix pairs |", "| --- | --- | --- |"]
    for bucket in BUCKET_ORDER:
        if bucket in accuracy:
            count = (counts or {}).get(bucket, "")
            rows.append(f"| {bucket} | {accuracy[bucket]:.3f} | {count} |")
    return "\n".join(rows)


def model_card(config: PrefixRewardConfig, repo_id: str | None = None) -> ModelCard:
    """The model card of a prefix reward model, from its configuration.

    The YAML metadata carries `library_name: hf_rgtg`, the `reward-model` and `prefix-reward-model` tags, the base
    model (its Hub id; a local path is left out), the training data sets and the metrics; the body has a usage
    snippet (scoring a response, and guided decoding when the base model's Hub id is known and it is a causal language
    model, whose tokenizer the reward model shares; an encoder's base model is not one), the training data and
    settings, and the prefix-accuracy table (or why there is none), as far as `config.training_summary` records
    them.

    Args:
        config ([`PrefixRewardConfig`]): the model's configuration.
        repo_id (`str`, *optional*): the Hub id, or the name of the folder the model is saved in: the card's title
            and what its usage snippet loads. `save_pretrained` passes the folder's name when given no Hub id.

    Examples:

    ```python
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import PrefixRewardConfig
    >>> from hf_rgtg.hub import model_card

    >>> config = PrefixRewardConfig(text_config=GPT2Config(n_layer=1), base_model_name_or_path="openai-community/gpt2",
    ...                             training_summary={"datasets": ["org/pairs"], "settings": {"prefix_sampling": "all"}})
    >>> card = model_card(config, repo_id="org/gpt2-prefix-rm")
    >>> card.data.library_name, card.data.base_model, card.data.datasets
    ('hf_rgtg', 'openai-community/gpt2', ['org/pairs'])
    ```
    """
    summary: dict[str, Any] = dict(config.training_summary or {})
    base_model = base_model_id(config)
    evaluation = summary.get("prefix_accuracy") or {}
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        tags=list(TAGS),
        base_model=base_model,
        datasets=summary.get("datasets") or None,
        metrics=["accuracy"] if evaluation else None,
        model_name=repo_id.split("/")[-1] if repo_id else None,
    )
    # The language model to guide shares the reward model's tokenizer when the base model is a causal one.
    guided = base_model if is_incrementally_scorable(config.text_config) else None
    sections = [
        f"# {repo_id or 'Prefix reward model'}",
        _description(config, base_model, trained=bool(summary)),
        "## Usage",
        usage_snippet(repo_id or "<this repo>", guided, chat=bool(summary.get("chat_template"))),
    ]
    if not is_incrementally_scorable(config.text_config):
        sections.append(
            "Its tokenizer is the encoder's own, not a language model's: to guide a language model with it, a "
            "scorer decodes each candidate continuation and re-encodes the text (the prompt with this tokenizer's "
            "special tokens, the response without) before reading `rm(input_ids, attention_mask=...).reward`."
        )
    elif base_model is None:
        sections.append(
            "To guide decoding with it, load the language model it was trained on (it shares this tokenizer) and "
            "pass `RewardGuidance(rm, tokenizer).generate_kwargs()` to its `generate()`."
        )
    sections += _head_sections(config)
    if summary.get("description"):
        sections += ["## What it prefers", str(summary["description"])]
    sections += _training_sections(summary)
    if summary:
        sections += _accuracy_sections(summary)
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    return ModelCard(content)


def hub_model_id(name: str | None) -> str | None:
    """`name` when it reads as a Hub model id (`org/name`) and names no local file or folder; else `None`."""
    if not name or not _HUB_ID.fullmatch(name) or ".." in name or Path(name).expanduser().exists():
        return None
    return name


def base_model_id(config: PrefixRewardConfig) -> str | None:
    """The Hub id of the model the reward model was built on: the recorded base model, else the backbone's
    `_name_or_path`, whichever reads as a Hub id; `None` when only a local path is known."""
    for name in (config.base_model_name_or_path, getattr(config.text_config, "_name_or_path", None)):
        if hub_model_id(name):
            return name
    return None


def usage_snippet(repo: str, base_model: str | None, chat: bool) -> str:
    """The card's code: load the reward model and its tokenizer from `repo`, score a response to a prompt (chat
    messages through the tokenizer's chat template when `chat`, else plain text as training reads it), and, with
    the `base_model`'s Hub id, guide that language model's decoding with it."""
    prompt = (
        f'prompt = [{{"role": "user", "content": "{EXAMPLE_PROMPT}"}}]  # rendered with the chat template'
        if chat
        else f'prompt = "{EXAMPLE_PROMPT}"'
    )
    lines = [
        "```python",
        *(["import hf_rgtg"] if base_model else []),
        "from transformers import "
        + ("AutoModelForCausalLM, AutoTokenizer" if base_model else "AutoTokenizer"),
        "from hf_rgtg import AutoModelForPrefixReward, "
        + ("RewardGuidance, token_rewards" if base_model else "token_rewards"),
        "",
        f'rm = AutoModelForPrefixReward.from_pretrained("{repo}").eval()',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
        "",
        "# The reward of a response to the prompt, and each response token's share of it.",
        prompt,
        f'scored = token_rewards(rm, tokenizer, prompt, "{EXAMPLE_RESPONSE}")',
        "print(scored.reward, list(zip(scored.tokens, scored.rewards)))",
    ]
    if base_model:
        lines += _guided_decoding_lines(base_model, chat)
    return "\n".join([*lines, "```"])


def _guided_decoding_lines(base_model: str, chat: bool) -> list[str]:
    """The snippet's guided decoding of `base_model`, the language model the reward model shares a tokenizer with."""
    inputs = (
        'tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)'
        if chat
        else 'tokenizer(prompt, return_tensors="pt")'
    )
    return [
        "",
        "# Reward-guided sampling (PARGS) of the language model it was trained on: processor + stopping criteria ...",
        f'lm = AutoModelForCausalLM.from_pretrained("{base_model}")',
        f"inputs = {inputs}",
        "guidance = RewardGuidance(rm, tokenizer, beta=2.0, top_k=10)",
        "out = lm.generate(**inputs, do_sample=True, max_new_tokens=64, **guidance.generate_kwargs())",
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
        "",
        "# ... or `generate(reward_model=...)` after the explicit opt-in.",
        "hf_rgtg.enable_reward_guided_generate()",
        "out = lm.generate(**inputs, reward_model=rm, beta=2.0, top_k=10, do_sample=True, max_new_tokens=64)",
    ]


#: How the card names each form of an all-token head.
VOCAB_HEAD_NAMES = {
    "full": "an all-token (vocab) head, a full `vocab_size x hidden_size` map,",
    "factorised": "an all-token (vocab) head, factorised as `r(v) = e_v . (A h + a) + c . h + b` over the language model's "
    "output embedding,",
}


def _base_model_cell(config: PrefixRewardConfig) -> str:
    """The base model as the card names it: its Hub id, never a local path."""
    base = base_model_id(config)
    if base is not None:
        return f"`{base}`"
    return "a local model (not on the Hub)" if config.base_model_name_or_path else "unknown"


def _head_sections(config: PrefixRewardConfig) -> list[str]:
    """The card's "Head" section: the head's kind, the layer it reads, the base model and how it was saved."""
    if config.head_type == "classifier":
        return []
    kind = f"vocab ({config.vocab_head})" if config.is_vocab_head else "scalar"
    rows = [
        ("kind", kind),
        ("layer", "final output" if config.head_layer is None else f"hidden layer {config.head_layer}"),
        ("base model", _base_model_cell(config)),
    ]
    if config.base_model_revision:
        rows.append(("base model revision", config.base_model_revision))
    if config.base_model_hash:
        rows.append(("base weights' content hash", f"`{config.base_model_hash}`"))
    rows.append(("saved", "the head alone" if config.saved_weights == "head" else "the whole model"))
    sections = [
        "## Head",
        "\n".join(["| | |", "| --- | --- |"] + [f"| {name} | {value} |" for name, value in rows]),
    ]
    if config.is_vocab_head:
        sections.append(
            "From the hidden state at position `t` the head outputs the reward of the prefix extended by every token "
            "of the vocabulary (FaRMA); `rewards[:, t]` is that output at `t - 1` gathered at the real token `t`. "
            "Guided decoding reads the k candidates' values from one hidden state: one 1-token reward-model step "
            "per token, or none at all when the language model guided is the base model (its own hidden state is "
            "read)."
        )
    if config.saved_weights == "head":
        sections.append(
            "This repository holds the head alone: `AutoModelForPrefixReward.from_pretrained` loads the backbone "
            "from the base model (the Hub cache, or the embedded default language model for "
            "HuggingFaceTB/SmolLM2-135M-Instruct) and checks its weights against the content hash."
        )
    return sections


def _description(config: PrefixRewardConfig, base_model: str | None, trained: bool) -> str:
    """The card's opening paragraph: what the model is, and whether hf_rgtg knows how it was trained."""
    head = (
        VOCAB_HEAD_NAMES[config.vocab_head]
        if config.is_vocab_head
        else "a linear head"
        if config.head_hidden_size is None
        else f"an MLP head (hidden size {config.head_hidden_size})"
    )
    layer = (
        "the backbone's final output" if config.head_layer is None else f"hidden layer {config.head_layer}"
    )
    if config.head_type == "classifier":
        reads = (
            " whose reward is its own sequence classifier's pooled logit, read once per sequence: each prefix of a "
            "response is scored as a sequence of its own. "
        )
    elif is_incrementally_scorable(config.text_config):
        reads = f" with {head} on {layer}, applied at every position, so one forward pass scores every prefix of a response. "
    else:
        reads = (
            f" with {head} on {layer}, read at the last token of each sequence: the backbone is not causal, so each "
            "prefix of a response is scored as a sequence of its own. "
        )
    return (
        f"A **prefix reward model** for reward-guided decoding with [hf_rgtg](https://pypi.org/project/hf-rgtg/): "
        f"a {config.text_config.model_type} backbone"
        + (f" (`{base_model}`)" if base_model else "")
        + reads
        + (
            "It was trained as a Bradley-Terry model on partial sequences (PARGS), to score partial answers as "
            "well as whole ones."
            if trained
            else "hf_rgtg has no record of its training: if it was built from a causal-LM checkpoint, its head is "
            "untrained."
        )
    )


def _training_sections(summary: Mapping[str, Any]) -> list[str]:
    """The "Training" section of the card (data, pairs, settings), or nothing when the summary has no data sets
    and no settings."""
    datasets = summary.get("datasets") or None
    settings = summary.get("settings") or {}
    if not (datasets or settings):
        return []
    sections = ["## Training"]
    if datasets:
        sections.append("Data: " + ", ".join(f"`{d}`" for d in datasets) + ".")
    pairs = [
        f"{summary[key]} {what}"
        for key, what in (("num_pairs", "for training"), ("num_eval_pairs", "held out"))
        if summary.get(key)
    ]
    if pairs:
        sections.append("Preference pairs: " + ", ".join(pairs) + ".")
    if settings:
        sections.append(
            "\n".join(
                ["| setting | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in settings.items()]
            )
        )
    return sections


#: What a trained model's card says in place of the accuracy table when no held-out pairs were evaluated.
NO_HELD_OUT_PAIRS = (
    "No held-out pairs were evaluated, so there is no accuracy table: `hf-rgtg train` was given no `--eval-data` "
    "and `--eval-fraction 0` (or, in Python, `trainer.evaluate_prefixes()` was not called before saving). "
    "`hf-rgtg eval-rm --rm <this model> --data <pairs>` measures it on any pairs."
)


def _accuracy_sections(summary: Mapping[str, Any]) -> list[str]:
    """The "Prefix accuracy" section of a trained model's card: the table, on how many held-out preference pairs,
    and the mean margin; or why there is no table."""
    evaluation = summary.get("prefix_accuracy") or {}
    if not evaluation:
        return ["## Prefix accuracy", NO_HELD_OUT_PAIRS]
    counts = summary.get("prefix_counts")
    held_out = summary.get("num_eval_pairs") or (counts or {}).get("full")
    sections = [
        "## Prefix accuracy",
        "Held-out accuracy of `r(chosen[:t]) > r(rejected[:t])`"
        + (f" on {held_out} preference pairs" if held_out else "")
        + ", by relative position `t / L` in the response. Each row counts the prefix pairs it rests on: every "
        "prefix length of every pair, and one per pair for `full`.",
        accuracy_table(evaluation, counts),
    ]
    if "mean_margin" in summary:
        sections.append(f"Mean reward margin over all prefixes: {summary['mean_margin']:.4f}.")
    return sections


__all__ = [
    "BUCKET_ORDER",
    "EXAMPLE_PROMPT",
    "EXAMPLE_RESPONSE",
    "LIBRARY_NAME",
    "NO_HELD_OUT_PAIRS",
    "TAGS",
    "accuracy_table",
    "base_model_id",
    "hub_model_id",
    "model_card",
    "usage_snippet",
]
