"""Configuration (a): GPT-2 shaped language and reward models with random seeded weights and a local vocabulary.

Both models have 4 layers, hidden size 256 and 4 heads. The byte-level BPE vocabulary of 8,192 tokens is trained
once on the Python standard library's top-level modules and cached in ``benchmarks/.cache``; the prompts are held-out
text (``/usr/share/common-licenses`` when present). Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from harness.configuration import Config, Setup, param_count
from harness.paths import CACHE_DIR, MIB, repo_relative
from transformers import GPT2Config, GPT2LMHeadModel

from hf_rgtg import PrefixRewardConfig, PrefixRewardModel

EOS_TEXT = "<|endoftext|>"


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


def setup_a(max_batch: int, prompt_length: int, max_new_tokens: int, seed: int) -> Setup:
    vocab_size = 8192
    tokenizer, path = trained_tokenizer(vocab_size)
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"The trained tokenizer has {tokenizer.get_vocab_size()} tokens, not {vocab_size}: delete {path} "
            "and give it more text."
        )
    eos = tokenizer.token_to_id(EOS_TEXT)
    ids = tokenizer.encode(_prompt_text()).ids
    stride = max(prompt_length, (len(ids) - prompt_length) // max(max_batch, 1))
    rows = [ids[i * stride : i * stride + prompt_length] for i in range(max_batch)]
    if any(len(row) != prompt_length or eos in row for row in rows):
        raise RuntimeError("Not enough prompt text for the requested batch size and prompt length.")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=max(640, prompt_length + max_new_tokens + 64),
        n_embd=256,
        n_layer=4,
        n_head=4,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(seed)
    lm = GPT2LMHeadModel(config).eval()
    torch.manual_seed(seed + 1)
    rm = PrefixRewardModel(PrefixRewardConfig(text_config=config)).eval()
    setup = Setup("a", lm, rm, torch.tensor(rows), eos, eos, [])
    setup.description = [
        f"LM: GPT2LMHeadModel, {param_count(lm)}, n_positions {config.n_positions}, seed {seed}; "
        f"RM: PrefixRewardModel(GPT-2 backbone), {param_count(rm)}, seed {seed + 1}.",
        f"Tokenizer: byte-level BPE, {vocab_size} tokens, trained on the top-level modules of the Python "
        f"standard library (<= 16 MiB), cached at `{repo_relative(path)}`. Prompts: {prompt_length}-token slices of "
        + (
            "/usr/share/common-licenses." if Path("/usr/share/common-licenses").is_dir() else "held-out text."
        ),
        f"attn_implementation: LM {lm.config._attn_implementation}, RM {rm.config.text_config._attn_implementation}.",
    ]
    return setup


CONFIG = Config("(a) GPT-2 shaped LM + RM, 4 layers, hidden 256, BPE 8k, random weights", setup_a)
