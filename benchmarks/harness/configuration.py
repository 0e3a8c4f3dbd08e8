"""What a configuration of the benchmark is: the models and prompts it builds, and the name it goes by.

Each module in `benchmarks/configs/` provides a `Config`: a label for the results file and a function that builds
a `Setup` for the largest batch and length of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from hf_rgtg import PrefixRewardModel


@dataclass
class Setup:
    """The models and prompts of one configuration, built for the largest batch and length of the run.

    `rm` reads the language model's token ids. `reward_models` are the configuration's other reward models, by the
    role the methods look them up by (see `harness.methods`): `"second"`, one more of `rm`'s shape and vocabulary;
    `"bridged"`, a decoder, and `"encoder"`, an encoder, both with `reward_tokenizer`, another tokenizer than the
    language model's `lm_tokenizer`. A configuration
    without them does not run the methods that need them.
    """

    key: str
    lm: torch.nn.Module
    rm: PrefixRewardModel
    prompts: torch.Tensor  # (max batch, prompt length), every token real
    eos_token_id: int
    pad_token_id: int
    description: list[str] = field(default_factory=list)
    reward_models: dict[str, PrefixRewardModel] = field(default_factory=dict)
    lm_tokenizer: PreTrainedTokenizerBase | None = None
    reward_tokenizer: PreTrainedTokenizerBase | None = None

    @property
    def prompt_texts(self) -> list[str]:
        """The prompts as text (decoded with `lm_tokenizer`), as the methods that read text are given them."""
        if self.lm_tokenizer is None:
            raise ValueError(f"({self.key}) has no language-model tokenizer to decode its prompts with.")
        return self.lm_tokenizer.batch_decode(self.prompts.tolist(), clean_up_tokenization_spaces=False)

    @property
    def vocab_size(self) -> int:
        return self.rm.config.text_config.get_text_config().vocab_size

    def prompt(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.prompts[:batch].clone()
        return ids, torch.ones_like(ids)

    def rm_cache_bytes(self, batch: int, length: int) -> int:
        """Keys and values of the reward model for `batch` rows of `length` tokens."""
        config = self.rm.config.text_config.get_text_config()
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        element = torch.finfo(self.rm.dtype).bits // 8
        return 2 * config.num_hidden_layers * kv_heads * head_dim * length * batch * element

    def rm_weight_bytes(self) -> int:
        return weight_bytes(self.rm)


@dataclass(frozen=True)
class Config:
    """One configuration: `label` heads its lines in the Setup section; `build(max_batch, prompt_length,
    max_new_tokens, seed)` loads the models and makes the prompts."""

    label: str
    build: Callable[[int, int, int, int], Setup]


def vocab_reward_model(lm) -> PrefixRewardModel:
    """A separate all-token reward model of the language model's size: a copy of its backbone and a full vocab
    head (started from its output embedding)."""
    return PrefixRewardModel.from_language_model(lm, share_backbone=False, head_kind="vocab").eval()


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def param_count(model: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"
