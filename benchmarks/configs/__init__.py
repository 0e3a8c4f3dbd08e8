"""The configurations of `benchmarks/decode_speed.py`, one module each, by the key the command line takes."""

from __future__ import annotations

from harness.configuration import Config

from configs import gpt2_bpe, smollm2

CONFIGS: dict[str, Config] = {"a": gpt2_bpe.CONFIG, "b": smollm2.CONFIG}
