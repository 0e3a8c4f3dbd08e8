"""Model cards of prefix reward models, written by `save_pretrained` and pushed by `push_to_hub`, and the
prefix-accuracy table they show (which `hf-rgtg eval-rm` and `hf-rgtg train` print too)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .configuration import PrefixRewardConfig

LIBRARY_NAME = "hf_rgtg"
TAGS = ["reward-model", "prefix-reward-model", "hf_rgtg"]
#: The rows of the prefix-accuracy table: the quarters of the response by relative position, then the whole response.
BUCKET_ORDER = ("0-25%", "25-50%", "50-75%", "75-100%", "full")

_USAGE = """```python
import hf_rgtg
from transformers import AutoModelForCausalLM, AutoTokenizer
from hf_rgtg import AutoModelForPrefixReward, RewardGuidance

rm = AutoModelForPrefixReward.from_pretrained("{repo_id}")
lm = AutoModelForCausalLM.from_pretrained("{base_model}")
tokenizer = AutoTokenizer.from_pretrained("{base_model}")
inputs = tokenizer("...", return_tensors="pt")

# Reward-guided sampling (PARGS): explicit processor + stopping criteria ...
guidance = RewardGuidance(rm, tokenizer, beta=2.0, top_k=10)
out = lm.generate(**inputs, do_sample=True, max_new_tokens=64, **guidance.generate_kwargs())

# ... or `generate(reward_model=...)` after the explicit opt-in.
hf_rgtg.enable_reward_guided_generate()
out = lm.generate(**inputs, reward_model=rm, beta=2.0, top_k=10, do_sample=True, max_new_tokens=64)
```"""


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
    | prefix of the response | accuracy | pairs |
    | --- | --- | --- |
    | 0-25% | 0.610 | 120 |
    | full | 0.900 | 30 |
    ```
    """
    rows = ["| prefix of the response | accuracy | pairs |", "| --- | --- | --- |"]
    for bucket in BUCKET_ORDER:
        if bucket in accuracy:
            count = (counts or {}).get(bucket, "")
            rows.append(f"| {bucket} | {accuracy[bucket]:.3f} | {count} |")
    return "\n".join(rows)


def model_card(config: PrefixRewardConfig, repo_id: str | None = None) -> ModelCard:
    """The model card of a prefix reward model, from its configuration.

    The YAML metadata carries `library_name: hf_rgtg`, the `reward-model` and `prefix-reward-model` tags, the base
    model, the training data sets and the metrics; the body has a usage snippet, the training data and settings,
    and the prefix-accuracy table, as far as `config.training_summary` records them.

    Args:
        config ([`PrefixRewardConfig`]): the model's configuration.
        repo_id (`str`, *optional*): the Hub id shown in the usage snippet.

    Examples:

    ```python
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import PrefixRewardConfig
    >>> from hf_rgtg.hub import model_card

    >>> config = PrefixRewardConfig(text_config=GPT2Config(n_layer=1), base_model_name_or_path="gpt2",
    ...                             training_summary={"datasets": ["org/pairs"], "settings": {"prefix_sampling": "all"}})
    >>> card = model_card(config, repo_id="org/gpt2-prefix-rm")
    >>> card.data.library_name, card.data.base_model, card.data.datasets
    ('hf_rgtg', 'gpt2', ['org/pairs'])
    ```
    """
    summary: dict[str, Any] = dict(config.training_summary or {})
    base_model = config.base_model_name_or_path
    datasets = summary.get("datasets") or None
    evaluation = summary.get("prefix_accuracy") or {}
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        tags=list(TAGS),
        base_model=base_model,
        datasets=datasets,
        metrics=["accuracy"] if evaluation else None,
        model_name=repo_id.split("/")[-1] if repo_id else None,
    )
    sections = [
        f"# {repo_id or 'this prefix reward model'}",
        _description(config, trained=bool(summary)),
        "## Usage",
        _USAGE.format(repo_id=repo_id or "<this repo>", base_model=base_model or "<the language model>"),
    ]
    if summary.get("description"):
        sections += ["## What it prefers", str(summary["description"])]
    sections += _training_sections(summary)
    if evaluation:
        sections += [
            "## Prefix accuracy",
            "Held-out accuracy of `r(chosen[:t]) > r(rejected[:t])` by relative position `t / L` in the response:",
            accuracy_table(evaluation, summary.get("prefix_counts")),
        ]
        if "mean_margin" in summary:
            sections.append(f"Mean reward margin over all prefixes: {summary['mean_margin']:.4f}.")
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    return ModelCard(content)


def _description(config: PrefixRewardConfig, trained: bool) -> str:
    """The card's opening paragraph: what the model is, and whether hf_rgtg knows how it was trained."""
    base_model = config.base_model_name_or_path
    head = (
        "a linear head"
        if config.head_hidden_size is None
        else f"an MLP head (hidden size {config.head_hidden_size})"
    )
    layer = (
        "the backbone's final output" if config.head_layer is None else f"hidden layer {config.head_layer}"
    )
    return (
        f"A **prefix reward model** for reward-guided decoding with [hf_rgtg](https://pypi.org/project/hf-rgtg/): "
        f"a {config.text_config.model_type} backbone"
        + (f" (`{base_model}`)" if base_model else "")
        + f" with {head} on {layer}, applied at every position, so one forward pass scores every prefix of a "
        "response. "
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
    if summary.get("num_pairs"):
        sections.append(f"Preference pairs: {summary['num_pairs']}.")
    if settings:
        sections.append(
            "\n".join(
                ["| setting | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in settings.items()]
            )
        )
    return sections


__all__ = ["BUCKET_ORDER", "LIBRARY_NAME", "TAGS", "accuracy_table", "model_card"]
