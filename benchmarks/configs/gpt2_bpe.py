"""Configuration (a): GPT-2 shaped language and reward models with random seeded weights and a local vocabulary.

Both models have 4 layers, hidden size 256 and 4 heads. The byte-level BPE vocabulary of 8,192 tokens is trained
once on the Python standard library's top-level modules and cached in ``benchmarks/.cache``; the prompts are held-out
text (``/usr/share/common-licenses`` when present). Nothing is downloaded.

For the methods with another tokenizer, a second vocabulary of 6,144 tokens is trained on the same corpus, with a
reward model of the same GPT-2 shape and a BERT-shaped encoder reward model reading it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from harness.configuration import Config, Setup, param_count, vocab_reward_model
from harness.paths import CACHE_DIR, MIB, repo_relative
from transformers import BertConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from hf_rgtg import PrefixRewardConfig, PrefixRewardModel

EOS_TEXT = "<|endoftext|>"
OTHER_VOCAB_SIZE = 6144  # the vocabulary of the reward models with another tokenizer


def _corpus_files() -> list[Path]:
    stdlib = Path(os.__file__).resolve().parent
    return sorted(p for p in stdlib.glob("*.py") if p.is_file())


def _prompt_text() -> str:
    licenses = Path("/usr/share/common-licenses")
    if licenses.is_dir():
        texts = []
        for path in sorted(licenses.iterdir()):
            if path.is_file():
                texts.append(path.read_text(errors="replace"))
        if sum(len(t) for t in texts) > 50_000:
            return "\n".join(texts)
    # Held-out fallback: the standard library's package sources (the tokenizer trains on its top-level modules).
    stdlib = Path(os.__file__).resolve().parent
    return "\n".join(p.read_text(errors="replace") for p in sorted(stdlib.glob("json/*.py")))


def trained_tokenizer(vocab_size: int, max_corpus_bytes: int = 16 * MIB):
    """A byte-level BPE tokenizer of `vocab_size` tokens, trained once on local text and cached."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = CACHE_DIR / f"bpe-{vocab_size}.json"
    if path.is_file():
        return Tokenizer.from_file(str(path)), path

    def texts():
        total = 0
        for file in _corpus_files():
            text = file.read_text(errors="replace")
            total += len(text)
            yield text
            if total >= max_corpus_bytes:
                return

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts(), trainer=trainer)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    tokenizer.save(str(staging))
    os.replace(staging, path)
    return tokenizer, path


def checked_tokenizer(vocab_size: int):
    """`trained_tokenizer(vocab_size)`, refused when the corpus gave it fewer tokens."""
    tokenizer, path = trained_tokenizer(vocab_size)
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"The trained tokenizer has {tokenizer.get_vocab_size()} tokens, not {vocab_size}: delete {path} "
            "and give it more text."
        )
    return tokenizer, path


def _gpt2_config(vocab_size: int, positions: int, eos: int) -> GPT2Config:
    """The GPT-2 shape of every model of (a): 4 layers, hidden size 256, 4 heads."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=positions,
        n_embd=256,
        n_layer=4,
        n_head=4,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def _reward_model(text_config, seed: int) -> PrefixRewardModel:
    torch.manual_seed(seed)
    return PrefixRewardModel(PrefixRewardConfig(text_config=text_config)).eval()


def _wrapped(tokenizer) -> PreTrainedTokenizerFast:
    """A `tokenizers.Tokenizer` as the transformers tokenizer that `RewardGuidance` takes."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS_TEXT, eos_token=EOS_TEXT, pad_token=EOS_TEXT
    )


def setup_a(max_batch: int, prompt_length: int, max_new_tokens: int, seed: int) -> Setup:
    vocab_size = 8192
    tokenizer, path = checked_tokenizer(vocab_size)
    eos = tokenizer.token_to_id(EOS_TEXT)
    ids = tokenizer.encode(_prompt_text()).ids
    stride = max(prompt_length, (len(ids) - prompt_length) // max(max_batch, 1))
    rows = [ids[i * stride : i * stride + prompt_length] for i in range(max_batch)]
    if any(len(row) != prompt_length or eos in row for row in rows):
        raise RuntimeError("Not enough prompt text for the requested batch size and prompt length.")
    config = _gpt2_config(vocab_size, max(640, prompt_length + max_new_tokens + 64), eos)
    torch.manual_seed(seed)
    lm = GPT2LMHeadModel(config).eval()
    rm = _reward_model(config, seed + 1)
    setup = Setup("a", lm, rm, torch.tensor(rows), eos, eos, [], lm_tokenizer=_wrapped(tokenizer))
    setup.reward_models["second"] = _reward_model(config, seed + 4)
    setup.reward_models["vocab"] = vocab_reward_model(lm)
    setup.description = [
        f"LM: GPT2LMHeadModel, {param_count(lm)}, n_positions {config.n_positions}, seed {seed}; "
        f"RM: PrefixRewardModel(GPT-2 backbone), {param_count(rm)}, seed {seed + 1}; a second RM of that shape, "
        f"seed {seed + 4} (two-rms); an all-token RM, a copy of the LM's backbone with a full V × d head "
        "(vocab), and a factorised head over the LM's own backbone (vocab-backbone).",
        f"Tokenizer: byte-level BPE, {vocab_size} tokens, trained on the top-level modules of the Python "
        f"standard library (<= 16 MiB), cached at `{repo_relative(path)}`. Prompts: {prompt_length}-token slices of "
        + (
            "/usr/share/common-licenses." if Path("/usr/share/common-licenses").is_dir() else "held-out text."
        ),
        f"attn_implementation: LM {lm.config._attn_implementation}, RM {rm.config.text_config._attn_implementation}.",
    ]
    # The random LM writes long runs without spaces ("vidvidvid..."), which the other vocabulary spends up to about
    # three tokens per LM token on: room for four.
    _add_other_tokenizer(setup, 4 * (prompt_length + max_new_tokens) + 64, seed + 2)
    return setup


def _add_other_tokenizer(setup: Setup, positions: int, seed: int) -> None:
    """The reward models of the methods with another tokenizer: a second byte-level BPE vocabulary trained on the
    same corpus, a GPT-2 of the LM's shape reading it (`bridged`, `text`) and a BERT of the same size (`encoder`).
    The decoder has room for `positions` tokens: another vocabulary may spend more tokens on the same text."""
    tokenizer, path = checked_tokenizer(OTHER_VOCAB_SIZE)
    eos = tokenizer.token_to_id(EOS_TEXT)
    decoder = _reward_model(_gpt2_config(OTHER_VOCAB_SIZE, positions, eos), seed)
    encoder = _reward_model(
        BertConfig(
            vocab_size=OTHER_VOCAB_SIZE,
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
            max_position_embeddings=1024,
            pad_token_id=eos,
        ),
        seed + 1,
    )
    setup.reward_tokenizer = _wrapped(tokenizer)
    setup.reward_models.update(bridged=decoder, encoder=encoder)
    setup.description.append(
        f"Another tokenizer: byte-level BPE, {OTHER_VOCAB_SIZE} tokens, trained on the same corpus, cached at "
        f"`{repo_relative(path)}`. Its RMs: PrefixRewardModel(GPT-2 backbone of the LM's shape, n_positions "
        f"{positions}), {param_count(decoder)}, seed {seed} (bridged, text); PrefixRewardModel(BERT: 4 layers, "
        f"hidden 256, 4 heads, intermediate 1024), {param_count(encoder)}, seed {seed + 1} (encoder). "
        f"attn_implementation: {decoder.config.text_config._attn_implementation}, "
        f"{encoder.config.text_config._attn_implementation}."
    )


CONFIG = Config("(a) GPT-2 shaped LM + RM, 4 layers, hidden 256, BPE 8k, random weights", setup_a)
