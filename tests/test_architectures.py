"""Every causal-LM architecture of the installed transformers, as a reward model: exact on the cache, or refused.

The walk goes over transformers' causal-LM auto mapping. Each architecture is built from a tiny configuration
(2 layers, hidden size 64, windows and chunks of 6 positions, so that a 20-token prompt passes any window) as a
prefix reward model. Then either `scorer="auto"` picks the cached scorer, and its rewards equal the reference
scorer's within 1e-4 over left-padded prompts, three candidates per row and a beam reorder; or it picks the
reference scorer. Architectures that cannot be built from a tiny configuration are listed with the reason. The
table is printed (`pytest -s`) and kept in `docs/architectures.md`.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass

import pytest
import torch
from conftest import VOCAB_SIZE
from transformers import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from hf_rgtg.configuration import PrefixRewardConfig
from hf_rgtg.modeling import PrefixRewardModel
from hf_rgtg.scoring import CACHE_EXACT_MODEL_TYPES, CachedScorer, ReferenceScorer, make_scorer

#: What every configuration is given; a configuration ignores (or keeps as an attribute) what it does not use.
TINY = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
    # Windows, chunks and local attention shorter than the prompt, so that a windowed scheme shows.
    "sliding_window": 6,
    "attention_chunk_size": 6,
    "window_size": 6,
    # Mixtures of experts: a few small ones.
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
PROMPT_LENGTH = 20
CANDIDATES = 3
ATOL = 1e-4


#: The settings that turn windows off, for a second try of an architecture whose windows sent it to the reference
#: scorer: most such families (Mistral, Qwen2, ...) also run with full attention.
NO_WINDOWS = {"sliding_window": None, "use_sliding_window": False, "attention_chunk_size": None}


@dataclass
class Outcome:
    model_type: str
    scorer: str  # "cached", "reference" or "not built"
    detail: str
    variant: str = ""  # "" for the tiny configuration, "no windows" for the second try


#: A configuration that keeps more parameters than this after `TINY` ignores some of it; it is not built.
MAX_PARAMETERS = 2_000_000


def build(model_type: str, **overrides) -> PrefixRewardModel:
    config_class = CONFIG_MAPPING[model_type]
    # Only the settings the configuration declares: a window given to one without windows would be kept as an
    # attribute and read by the cache, though the model never applies it.
    known = {field.name for field in dataclasses.fields(config_class)} | set(config_class.attribute_map)
    settings = {key: value for key, value in TINY.items() if key in known}
    config = PrefixRewardConfig(text_config=config_class(**{**settings, **overrides}))
    with torch.device("meta"):
        parameters = sum(p.numel() for p in PrefixRewardModel(config).parameters())
    if parameters > MAX_PARAMETERS:
        raise ValueError(f"the tiny configuration still has {parameters / 1e6:.1f} M parameters")
    torch.manual_seed(0)
    return PrefixRewardModel(config).eval()


def largest_difference(reward_model: PrefixRewardModel, steps: int = 3) -> float:
    """The largest |cached - reference| reward over the prompts and `steps` steps of candidates."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB_SIZE, (2, PROMPT_LENGTH), generator=generator)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0  # left padding
    fast, reference = CachedScorer(reward_model), ReferenceScorer(reward_model)
    worst = (fast.reset(ids, mask, CANDIDATES) - reference.reset(ids, mask, CANDIDATES)).abs().max().item()
    for step in range(steps):
        candidates = torch.randint(3, VOCAB_SIZE, (2, CANDIDATES), generator=generator)
        worst = max(worst, (fast.score(candidates) - reference.score(candidates)).abs().max().item())
        chosen = torch.tensor([step % CANDIDATES, (step + 1) % CANDIDATES])
        tokens = candidates[torch.arange(2), chosen]
        parents = torch.tensor([1, 0]) if step == 1 else None  # beam search swapping the rows
        if parents is not None:
            tokens, chosen = tokens[parents], chosen[parents]
        for scorer in (fast, reference):
            scorer.advance(tokens, parents, chosen)
    return worst


def walk_one(model_type: str, variant: str = "", **overrides) -> Outcome:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # configurations warn about the settings they do not use
        try:
            reward_model = build(model_type, **overrides)
        except Exception as error:  # noqa: BLE001  (any failure to build is listed, with its reason)
            reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:150]}"
            return Outcome(model_type, "not built", reason, variant)
    scorer = make_scorer(reward_model, "auto")
    if isinstance(scorer, ReferenceScorer):
        return Outcome(model_type, "reference", CachedScorer.unsupported_reason(reward_model) or "", variant)
    return Outcome(
        model_type, "cached", f"largest difference {largest_difference(reward_model):.1e}", variant
    )


def walk(model_type: str) -> list[Outcome]:
    """The tiny configuration and, where its windows sent it to the reference scorer, the same without windows."""
    outcomes = [walk_one(model_type)]
    if outcomes[0].scorer == "reference" and "full attention only" in outcomes[0].detail:
        retry = walk_one(model_type, "no windows", **NO_WINDOWS)
        if retry.scorer != "not built":
            outcomes.append(retry)
    return outcomes


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    logging.getLogger("hf_rgtg").setLevel(logging.ERROR)  # the fallback line, once per architecture
    try:
        results = [
            outcome for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES for outcome in walk(model_type)
        ]
    finally:
        logging.getLogger("hf_rgtg").setLevel(logging.NOTSET)
    print(f"\n{'architecture':<40} {'scorer':<10} detail")
    for outcome in results:
        name = f"{outcome.model_type} ({outcome.variant})" if outcome.variant else outcome.model_type
        print(f"{name:<40} {outcome.scorer:<10} {outcome.detail}")
    return results


def test_every_architecture_is_exact_on_the_cache_or_falls_back(outcomes):
    for outcome in outcomes:
        if outcome.scorer == "cached":
            difference = float(outcome.detail.rsplit(" ", 1)[-1])
            assert difference <= ATOL, f"{outcome.model_type}: cached rewards differ by {difference:.1e}"
    assert {o.model_type for o in outcomes if o.scorer == "cached"} <= CACHE_EXACT_MODEL_TYPES


def test_every_proven_family_is_walked_and_cached(outcomes):
    for model_type in sorted(CACHE_EXACT_MODEL_TYPES):
        tries = [outcome for outcome in outcomes if outcome.model_type == model_type]
        if not tries:
            continue  # a family of a newer transformers than the one installed
        assert any(o.scorer == "cached" for o in tries), (
            f"{model_type}: {[(o.scorer, o.detail) for o in tries]}"
        )


@pytest.mark.parametrize(
    ("model_type", "overrides", "reason"),
    [
        ("gpt_neo", {"attention_types": [[["global", "local"], 1]], "window_size": 4}, "not proven exact"),
        ("mpt", {}, "not proven exact"),
        ("bloom", {}, "not proven exact"),
        ("falcon", {"alibi": True}, "ALiBi"),
        (
            "llama",
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
            "dynamic",
        ),
        (
            "qwen2",
            {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0},
            "full attention only",
        ),
    ],
)
def test_windowed_alibi_and_dynamic_schemes_get_exact_rewards_through_auto_and_a_refusal_from_cached(
    model_type, overrides, reason
):
    reward_model = build(model_type, **overrides)
    scorer = make_scorer(reward_model, "auto")
    assert isinstance(scorer, ReferenceScorer)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB_SIZE, (2, PROMPT_LENGTH), generator=generator)
    candidates = torch.randint(3, VOCAB_SIZE, (2, CANDIDATES), generator=generator)
    scorer.reset(ids, torch.ones_like(ids), CANDIDATES)
    rewards = scorer.score(candidates)
    with torch.no_grad():
        for row in range(2):
            full = torch.cat([ids[row].expand(CANDIDATES, -1), candidates[row, :, None]], dim=1)
            torch.testing.assert_close(rewards[row], reward_model(full).reward, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=rf"{reason}.*`scorer=\"reference\"`"):
        make_scorer(reward_model, "cached")


def markdown(results: list[Outcome]) -> str:
    """The walk as the table of `docs/architectures.md`."""
    import transformers

    counts = {kind: sum(o.scorer == kind for o in results) for kind in ("cached", "reference", "not built")}
    lines = [
        "# Architectures",
        "",
        'Which scorer `scorer="auto"` takes for a reward model of each causal-LM architecture of transformers '
        f"{transformers.__version__}, as `tests/test_architectures.py` walks them on every test run: "
        f"{counts['cached']} on the cache (each checked against the reference scorer), {counts['reference']} "
        f"re-encoded by the reference scorer, {counts['not built']} not built from a tiny configuration. "
        "Regenerate with `python tests/test_architectures.py > docs/architectures.md`.",
        "",
        "| architecture | scorer | detail |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| `{o.model_type}`{f' ({o.variant})' if o.variant else ''} | {o.scorer} | {o.detail.replace('|', '/')} |"
        for o in results
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    print(markdown([o for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES for o in walk(model_type)]), end="")
