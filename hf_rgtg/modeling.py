"""Prefix reward models: a backbone with a reward head at every position, scalar or all-token ("vocab")."""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput
from transformers.utils import hub as hub_utils

from .compat import CACHE_NAME, cache_field, cache_kwargs, output_cache, upload_saved_model
from .configuration import PrefixRewardConfig, is_incrementally_scorable
from .head_only import save_head_only
from .hub import TAGS, model_card
from .incremental import Depth

#: Keyword arguments of `from_pretrained` that locate a checkpoint (they go to `AutoConfig` as well).
HUB_KWARGS = (
    "revision",
    "token",
    "cache_dir",
    "local_files_only",
    "force_download",
    "proxies",
    "subfolder",
    "trust_remote_code",
)


def last_token_index(attention_mask: torch.Tensor | None, batch_size: int, seq_len: int) -> torch.Tensor:
    """Index of each row's last non-pad token among the last `seq_len` columns of `attention_mask`.

    Works for left and right padding alike: it is the rightmost column whose mask is 1. Rows with no such column
    get index 0.
    """
    if attention_mask is None:
        return torch.full((batch_size,), seq_len - 1, dtype=torch.long)
    mask = attention_mask[:, -seq_len:].to(torch.long)
    positions = torch.arange(seq_len, device=mask.device)
    return (positions * mask).argmax(-1)


def right_padding_order(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The column order that moves each row's real tokens to its front, in their order, and its padding behind
    them; `None` when every row is padded on the right already (or not at all).

    Examples:

    ```python
    >>> import torch
    >>> from hf_rgtg.modeling import right_padding_order
    >>> right_padding_order(torch.tensor([[0, 1, 1], [1, 1, 1]])).tolist()
    [[1, 2, 0], [0, 1, 2]]
    >>> right_padding_order(torch.tensor([[1, 1, 0]])) is None
    True
    ```
    """
    real = attention_mask.to(torch.bool)
    if not bool((real[:, 1:] & ~real[:, :-1]).any()):
        return None
    return torch.sort((~real).to(torch.int8), dim=1, stable=True).indices


def _reordered(value: Any, order: torch.Tensor) -> Any:
    """`value` with its columns (dimension 1) in `order` when it is a tensor with one column per token, else as
    it is. A tensor broadcast over the batch (`position_ids` of shape `(1, seq)`) is expanded first."""
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[1] != order.shape[1]:
        return value
    value = value.expand(order.shape[0], *value.shape[1:])
    index = order.view(*order.shape, *([1] * (value.dim() - 2))).expand_as(value)
    return value.gather(1, index)


def position_ids_from_attention_mask(attention_mask: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Position ids of the last `seq_len` tokens, counting only non-pad tokens (as `generate()` does)."""
    positions = attention_mask.to(torch.long).cumsum(-1) - 1
    return positions.clamp(min=0)[:, -seq_len:]


@dataclass
@cache_field
class PrefixRewardOutput(ModelOutput):
    r"""
    Output of a [`PrefixRewardModel`].

    `rewards` and `reward` mean the same for every kind of head, so that everything that reads them (training,
    token rewards, their telescoping sums, evaluation) works on all of them; how they are computed differs:

    - a `"scalar"` head gives `rewards[:, t]` from the hidden state at `t`;
    - a `"vocab"` (all-token) head outputs, from the hidden state at `t - 1`, the reward of the prefix ending at
      `t - 1` extended by every token: `rewards[:, t]` is that output gathered at the real token `t`. A row's first
      real token has no hidden state before it, and gets a reward of 0; with `cache`, the first new token's
      hidden state before it is the cache's, which the model does not keep, so its reward is `NaN` (guided decoding
      keeps that hidden state itself, see `scoring.VocabScorer`).

    Args:
        rewards (`torch.FloatTensor` of shape `(batch_size, sequence_length)`, *optional*):
            The reward of every prefix: `rewards[:, t]` scores the input up to and including token `t`. Positions
            that are padding carry meaningless values. Only a causal backbone gives them (`None` otherwise): on an
            encoder every position sees the tokens after it as well, so no position's value is the reward of the
            prefix it ends. Score each prefix as a sequence of its own there (as `token_rewards` does).
        reward (`torch.FloatTensor` of shape `(batch_size,)`):
            The reward of each row's whole sequence (its prefix reward, for a prompt and a partial response): the
            head at its last non-pad token (for a `"vocab"` head, `rewards` there), or a `"classifier"` head's pooled
            logit; under left or right padding alike.
        next_token_rewards (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`, *optional*):
            A `"vocab"` head's whole output, with `output_next_token_rewards=True`: `next_token_rewards[:, t, v]` is
            the reward of the input up to token `t` extended by token `v`, so that
            `rewards[:, t + 1] == next_token_rewards[:, t, input_ids[:, t + 1]]`.
            `None` for scalar heads, and by default (it holds `vocab_size` floats per position).
        cache (`Cache`, *optional*):
            The backbone's key/value cache, returned when `use_cache=True`. The field is named as the installed
            transformers names it (`cache` from 5.24, `past_key_values` before); `out.cache` and
            `out.past_key_values` both read it on every version, while keys (`out[...]`) and the constructor take
            the installed name, `hf_rgtg.compat.CACHE_NAME`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The backbone's hidden states, when `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            The backbone's attention weights, when `output_attentions=True`.
    """

    rewards: torch.FloatTensor | None = None
    reward: torch.FloatTensor | None = None
    next_token_rewards: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def linear_rows(head: nn.Module, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """A full (linear, `vocab_size` outputs) vocab head's outputs `(..., k)` at only the `tokens` `(..., k)`, from
    hidden states `(..., hidden_size)`: k dot products and the tokens' biases, not the whole vocabulary."""
    rows = (head.weight[tokens] * hidden.unsqueeze(-2)).sum(-1)
    return rows if head.bias is None else rows + head.bias[tokens]


class FactorisedVocabHead(nn.Module):
    r"""
    The factorised all-token head: `r(v) = e_v . (A h + a) + c . h + b`, with `e` the language model's output
    embedding (frozen), `A h + a` an affine map of the hidden state (`a` gives every token a reward of its own,
    `e_v . a`, whatever the context), `c . h` the value of the context itself, shared by every token, and `b` a
    scalar. Its `hidden_size**2 + 2 * hidden_size + 1` trained parameters do not grow with the vocabulary, and a
    token never seen in training still gets a reward through its embedding.

    The context's value `c . h` cancels between the candidates of one step, so it does not change which token
    guidance picks; it lets the head compare prefixes of different contexts (the Bradley-Terry loss on `chosen[:t]`
    against `rejected[:t]`, and the consistency constraint between positions) without routing that value through
    the embedding of every token.

    The embedding is passed to each call: a model whose input and output embeddings are tied passes its
    backbone's input embedding; otherwise the head keeps a copy of the output embedding as the buffer
    `output_embedding` (loaded from the language model's `lm_head.weight`, never trained).

    Args:
        hidden_size (`int`): the width of the hidden states it reads.
        vocab_size (`int`): the vocabulary's size.
        tied (`bool`): whether the output embedding is the backbone's input embedding (no copy kept).

    Examples:

    ```python
    >>> import torch
    >>> from hf_rgtg.modeling import FactorisedVocabHead

    >>> head = FactorisedVocabHead(hidden_size=4, vocab_size=6, tied=True)
    >>> embedding, hidden = torch.randn(6, 4), torch.randn(2, 4)
    >>> head(hidden, embedding).shape  # every token's reward
    torch.Size([2, 6])
    >>> rows = head.rows(hidden, torch.tensor([[1, 5], [0, 2]]), embedding)  # only two tokens' per row
    >>> torch.allclose(rows, head(hidden, embedding).gather(1, torch.tensor([[1, 5], [0, 2]])), atol=1e-6)
    True
    ```
    """

    def __init__(self, hidden_size: int, vocab_size: int, tied: bool):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.level = nn.Linear(hidden_size, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(()))
        if not tied:
            self.register_buffer("output_embedding", torch.zeros(vocab_size, hidden_size))

    def forward(self, hidden: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Every token's reward `(..., vocab_size)` from hidden states `(..., hidden_size)`."""
        return self.proj(hidden) @ embedding.T + self.level(hidden) + self.bias

    def rows(self, hidden: torch.Tensor, tokens: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """The rewards `(..., k)` of `tokens` `(..., k)` only: k dot products per hidden state `(..., hidden_size)`."""
        return (embedding[tokens] * self.proj(hidden).unsqueeze(-2)).sum(-1) + self.level(hidden) + self.bias


class PrefixRewardPreTrainedModel(PreTrainedModel):
    """Base class holding the loading and initialisation settings shared by prefix reward models."""

    config_class = PrefixRewardConfig
    config: PrefixRewardConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # A causal-LM checkpoint carries a language-model head that a reward model does not use.
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)lm_head\.", r"^cls\."]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, FactorisedVocabHead):
            init.zeros_(module.bias)


class PrefixRewardModel(PrefixRewardPreTrainedModel):
    r"""
    A prefix reward model: any `AutoModel` backbone with a scalar reward head. On a causal decoder the head applies
    at **every** position, so one forward pass returns `r(x, y[:t])` for every prefix length `t`, and the model
    can be fed incrementally with `cache`, giving the same per-position rewards as one full forward. Padding may be
    on either side: position ids are computed from the attention mask when not given, exactly as `generate()` does.

    On an encoder (BERT, RoBERTa, DeBERTa, ...) every position sees the whole input, so the model scores whole
    sequences only: `reward` is the reward of each input sequence (a prompt and a partial response being one
    prefix), `rewards` is `None`, and each prefix is a sequence of its own. Rows padded on the left are moved to
    right padding before the forward (an encoder numbers positions from the first column and a pooled classifier
    reads the first token), so `reward` does not depend on the padding side; `hidden_states` and `attentions` are
    then those of the right-padded rows. The head is either a new one read at the last real token
    (`head_type="per_position"`) or the encoder's own sequence classifier (`head_type="classifier"`).

    Load one with [`AutoModelForPrefixReward.from_pretrained`], which also turns causal-LM checkpoints, decoder
    `*ForSequenceClassification` reward models and encoder ones into prefix reward models.

    Args:
        config ([`PrefixRewardConfig`]): the backbone's configuration and the head's settings.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import LlamaConfig
    >>> from hf_rgtg import PrefixRewardConfig, PrefixRewardModel

    >>> text_config = LlamaConfig(
    ...     vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2,
    ... )
    >>> model = PrefixRewardModel(PrefixRewardConfig(text_config=text_config)).eval()
    >>> input_ids = torch.tensor([[5, 6, 7, 8]])
    >>> out = model(input_ids)
    >>> out.rewards.shape, out.reward.shape
    (torch.Size([1, 4]), torch.Size([1]))
    >>> model.vocab_size, model.max_positions
    (128, 2048)

    >>> # Feeding the last token on top of a cache gives the same reward as the full forward.
    >>> first = model(input_ids[:, :3], use_cache=True)
    >>> step = model(input_ids[:, 3:], cache=first.cache)
    >>> torch.allclose(step.reward, out.reward, atol=1e-5)
    True
    ```
    """

    def __init__(self, config: PrefixRewardConfig):
        super().__init__(config)
        if config.head_type == "classifier":
            # The reward is the classifier's own logit: its pooling and its head are part of the backbone.
            self.backbone = AutoModelForSequenceClassification.from_config(config.text_config)
            self.post_init()
            return
        self.backbone = AutoModel.from_config(config.text_config)
        text_config = config.text_config.get_text_config()
        hidden_size = text_config.hidden_size
        if config.is_vocab_head and config.vocab_head == "factorised":
            self.score = FactorisedVocabHead(
                hidden_size, text_config.vocab_size, tied=self.ties_output_embedding
            )
        elif config.is_vocab_head:
            self.score = nn.Linear(hidden_size, text_config.vocab_size, bias=config.head_bias)
        elif config.head_hidden_size is None:
            self.score = nn.Linear(hidden_size, 1, bias=config.head_bias)
        else:
            self.score = nn.Sequential(
                nn.Linear(hidden_size, config.head_hidden_size),
                nn.GELU(),
                nn.Linear(config.head_hidden_size, 1, bias=config.head_bias),
            )
        self.post_init()

    @property
    def ties_output_embedding(self) -> bool:
        """Whether the language model of this backbone's configuration ties its output embedding to its input
        embedding (`tie_word_embeddings`), so that a factorised vocab head reads the backbone's input embedding."""
        return bool(getattr(self.config.text_config.get_text_config(), "tie_word_embeddings", False))

    def _output_embedding(self) -> torch.Tensor:
        """The embedding `(vocab_size, hidden_size)` a factorised vocab head reads."""
        if self.ties_output_embedding:
            return self.backbone.get_input_embeddings().weight
        return self.score.output_embedding

    def _check_vocab_head(self, what: str) -> None:
        if not self.config.is_vocab_head:
            raise ValueError(
                f"`{what}` reads an all-token head, and this reward model's head is `head_kind="
                f"{self.config.head_kind!r}`: use `forward` (its `rewards`), or a model with `head_kind='vocab'`."
            )

    def vocab_values(self, hidden: torch.Tensor) -> torch.Tensor:
        """A vocab head's output on hidden states `(..., hidden_size)`: the reward `(..., vocab_size)` of the prefix
        each hidden state ends, extended by every token, in float32.

        Examples:

        ```python
        >>> import torch
        >>> from transformers import GPT2Config
        >>> from hf_rgtg import PrefixRewardConfig, PrefixRewardModel

        >>> config = PrefixRewardConfig(text_config=GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64),
        ...                             head_kind="vocab", vocab_head="factorised")
        >>> rm = PrefixRewardModel(config).eval()
        >>> ids = torch.tensor([[3, 4, 5]])
        >>> out = rm(ids, output_next_token_rewards=True)
        >>> out.next_token_rewards.shape
        torch.Size([1, 3, 64])
        >>> # The reward of [3, 4, 5] is the value of token 5 read from the hidden state at token 4.
        >>> torch.allclose(out.reward, out.next_token_rewards[:, 1, 5], atol=1e-6)
        True
        ```
        """
        self._check_vocab_head("vocab_values")
        if self.config.vocab_head == "factorised":
            return self.score(hidden, self._output_embedding()).float()
        return self.score(hidden).float()

    def candidate_values(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """A vocab head's rewards `(..., k)` of only the tokens `(..., k)` after hidden states `(..., hidden_size)`:
        k dot products each, not the whole vocabulary; in float32. Guided decoding scores its candidates with it.
        """
        self._check_vocab_head("candidate_values")
        hidden = hidden.to(self.dtype)
        # By the configuration, not the module's class: peft wraps the head it trains (`modules_to_save`).
        if self.config.vocab_head == "factorised":
            return self.score.rows(hidden, tokens, self._output_embedding()).float()
        return linear_rows(self.score, hidden, tokens).float()

    def vocab_rewards(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """A vocab head's per-position rewards `(batch, seq)` from the hidden states `(batch, seq, hidden)` of
        `input_ids`: `rewards[:, t]` is the value of token `t` read from the hidden state at `t - 1`, 0 at a row's
        first real token (no hidden state before it, including after padding). The one place that rule lives."""
        gathered = self.candidate_values(hidden[:, :-1], input_ids[:, 1:, None]).squeeze(-1)
        if attention_mask is not None and attention_mask.dim() == 2:
            before = attention_mask[:, -input_ids.shape[1] : -1].bool()
            gathered = torch.where(before, gathered, torch.zeros_like(gathered))
        return torch.cat([gathered.new_zeros(len(gathered), 1), gathered], dim=1)

    @property
    def supports_incremental_scoring(self) -> bool:
        """Whether rewards can be computed token by token on top of a key/value cache (decoder backbones only)."""
        return is_incrementally_scorable(self.config.text_config)

    @property
    def head_module_names(self) -> list[str]:
        """The modules that make up the reward head, by their names in the model: `["score"]`, or for a
        `"classifier"` head the classifier's modules outside its base model that hold weights (`backbone.classifier`,
        and DeBERTa-v2's `backbone.pooler`; BERT's pooler belongs to its base model). `train="head"` trains them
        alone, and LoRA trains them whole.

        Examples:

        ```python
        >>> from transformers import BertConfig
        >>> from hf_rgtg import PrefixRewardConfig, PrefixRewardModel

        >>> text_config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        ...                          num_labels=1)
        >>> PrefixRewardModel(PrefixRewardConfig(text_config=text_config)).head_module_names
        ['score']
        >>> PrefixRewardModel(PrefixRewardConfig(text_config=text_config, head_type="classifier")).head_module_names
        ['backbone.classifier']
        ```
        """
        if self.config.head_type != "classifier":
            return ["score"]
        base = self.backbone.base_model_prefix
        return [
            f"backbone.{name}"
            for name, module in self.backbone.named_children()
            if name != base and any(True for _ in module.parameters())
        ]

    @property
    def head_depth(self) -> Depth:
        """The hidden state the head reads, as a depth into the backbone: how many of its layers run and whether
        its final norm applies (see `head_layer` in [`PrefixRewardConfig`]). The incremental decoder of guided
        decoding runs the backbone to this depth.

        Examples:

        ```python
        >>> from transformers import GPT2Config
        >>> from hf_rgtg import PrefixRewardConfig, PrefixRewardModel

        >>> text_config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64)
        >>> PrefixRewardModel(PrefixRewardConfig(text_config=text_config)).head_depth
        Depth(layers=2, final_norm=True)
        >>> PrefixRewardModel(PrefixRewardConfig(text_config=text_config, head_layer=-2)).head_depth
        Depth(layers=1, final_norm=False)
        ```
        """
        text_config = self.config.text_config
        if self.config.head_type == "classifier":
            raise ValueError(
                "A `head_type='classifier'` reward model reads its backbone's own pooled classifier output, not a "
                "hidden state at a depth."
            )
        total = getattr(text_config, "num_hidden_layers", None)
        if total is None:
            raise ValueError(
                f"The backbone's configuration ({text_config.model_type}) declares no `num_hidden_layers`, so the "
                "depth the head reads cannot be told."
            )
        head_layer = self.config.head_layer
        if head_layer is None:
            return Depth(total, final_norm=True)
        layers = head_layer % (total + 1)
        # `hidden_states[total]` is the final norm's output unless the backbone's configuration unties it.
        tied = getattr(text_config, "tie_last_hidden_states", True)
        return Depth(layers, final_norm=layers == total and tied)

    @property
    def max_positions(self) -> int | None:
        """The backbone's maximum number of positions, if it declares one. RoBERTa-style embeddings number positions
        from after their padding index (`padding_idx + 1`), so they hold that many fewer than
        `max_position_embeddings`."""
        positions = getattr(self.config.text_config, "max_position_embeddings", None)
        embeddings = getattr(self.backbone.base_model, "embeddings", None)
        padding_idx = getattr(embeddings, "padding_idx", None)
        if positions is None or not isinstance(padding_idx, int):
            return positions
        return positions - padding_idx - 1

    @property
    def vocab_size(self) -> int:
        """How many token ids the backbone reads (its configuration's `vocab_size`)."""
        return self.config.text_config.get_text_config().vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        # `resize_token_embeddings` sets `model.vocab_size` after it has set the configuration's.
        self.config.text_config.get_text_config().vocab_size = value

    @property
    def backbone_eos_token_id(self) -> int | list[int] | None:
        """The end-of-sequence id(s) the backbone's configuration declares, if any."""
        return getattr(self.config.text_config.get_text_config(), "eos_token_id", None)

    def record_training_summary(self, summary: dict[str, Any]) -> None:
        """Keep how the reward model was trained in its configuration, where its model card reads it."""
        self.config.training_summary = summary

    def save_pretrained(
        self, save_directory: str | os.PathLike, *args, head_only: bool = False, **kwargs
    ) -> None:
        """`PreTrainedModel.save_pretrained`, plus a model card (`README.md`) built from the configuration, titled
        with `repo_id` (a Hub id) when given, else with the folder's name, which its usage snippet loads.

        With `head_only=True` only the head is written (`head.safetensors`), with the configuration declaring the
        base model's identity (name, revision, content hash of the weights the head reads): `from_pretrained` then
        reads the backbone from the base model and checks it, as a peft adapter is loaded. It needs
        `config.base_model_name_or_path` and a backbone still equal to that base (see
        [`~head_only.save_head_only`]).

        Examples:

        ```python
        >>> import tempfile
        >>> from transformers import AutoModelForCausalLM, GPT2Config
        >>> from hf_rgtg import AutoModelForPrefixReward, PrefixRewardModel

        >>> lm = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
        >>> base = tempfile.mkdtemp()
        >>> lm.save_pretrained(base)
        >>> rm = PrefixRewardModel.from_language_model(lm, head_kind="vocab", vocab_head="factorised", head_layer=1)
        >>> rm.config.base_model_name_or_path = base
        >>> folder = tempfile.mkdtemp()
        >>> rm.save_pretrained(folder, head_only=True)
        >>> sorted(p.name for p in __import__("pathlib").Path(folder).iterdir())
        ['README.md', 'config.json', 'head.safetensors']
        >>> loaded = AutoModelForPrefixReward.from_pretrained(folder)
        >>> loaded.config.saved_weights, loaded.config.base_model_hash == rm.config.base_model_hash
        ('head', True)
        ```
        """
        repo_id = kwargs.pop("repo_id", None) or Path(save_directory).resolve().name
        main_process = kwargs.get("is_main_process", True)
        if not head_only:
            super().save_pretrained(save_directory, *args, **kwargs)
            if main_process:
                model_card(self.config, repo_id=repo_id).save(Path(save_directory) / "README.md")
            return
        if main_process:
            config = save_head_only(self, save_directory)
            self.config.base_model_hash = config.base_model_hash
            model_card(config, repo_id=repo_id).save(Path(save_directory) / "README.md")

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs
    ) -> PrefixRewardModel:
        """`PreTrainedModel.from_pretrained`. A head saved alone (`saved_weights="head"`) is refused with the fix:
        `AutoModelForPrefixReward.from_pretrained` loads it, finding its base model."""
        config = kwargs.get("config")
        if not isinstance(config, PrefixRewardConfig):
            hub = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        if isinstance(config, PrefixRewardConfig) and config.saved_weights == "head":
            raise ValueError(
                f"{str(pretrained_model_name_or_path)!r} holds a reward head saved alone over "
                f"{config.base_model_name_or_path!r}: load it with `AutoModelForPrefixReward.from_pretrained`, "
                "which reads the backbone from that base model and checks it."
            )
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def from_language_model(
        cls, language_model: PreTrainedModel, *, share_backbone: bool = True, **head_settings: Any
    ) -> PrefixRewardModel:
        """A new (untrained) prefix reward head over a causal language model's own backbone.

        With `share_backbone=True` (the default) the reward model's backbone *is* the language model's base model:
        the same modules and tensors, no copy. A vocab head over it is then guided on the language model's own
        hidden states (the backbone scorer). A full vocab head starts from the language model's output embedding
        (as FaRMA starts from the SFT model's head), a factorised one reads it (a copy of it when untied).

        Args:
            language_model (`PreTrainedModel`): a causal LM (`*ForCausalLM`).
            share_backbone (`bool`, *optional*, defaults to `True`): share the base model, or copy it.
            head_settings: [`PrefixRewardConfig`] head settings (`head_kind`, `vocab_head`, `head_layer`,
                `head_bias`, `head_hidden_size`).

        Examples:

        ```python
        >>> from transformers import AutoModelForCausalLM, LlamaConfig
        >>> from hf_rgtg import PrefixRewardModel

        >>> lm = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
        >>> rm = PrefixRewardModel.from_language_model(lm, head_kind="vocab", head_layer=1)
        >>> rm.backbone is lm.base_model, rm.score.weight.shape
        (True, torch.Size([64, 32]))
        ```
        """
        if language_model.get_output_embeddings() is None:
            raise ValueError(
                f"`language_model` ({type(language_model).__name__}) has no output embedding: pass a causal language "
                "model (`AutoModelForCausalLM`)."
            )
        config = PrefixRewardConfig(
            text_config=copy.deepcopy(language_model.config.get_text_config()),
            base_model_name_or_path=getattr(language_model, "name_or_path", None) or None,
            **head_settings,
        )
        with torch.device("meta"):
            model = cls(config)
        backbone = language_model.base_model
        model.backbone = backbone if share_backbone else copy.deepcopy(backbone)
        parameter = next(backbone.parameters())
        model.score = model.score.to_empty(device=parameter.device).to(parameter.dtype)
        model.score.apply(model._init_weights)
        output_embedding = language_model.get_output_embeddings().weight.detach()
        if config.is_vocab_head and config.vocab_head == "full":
            with torch.no_grad():
                model.score.weight.copy_(output_embedding)
        elif config.is_vocab_head and not model.ties_output_embedding:
            model.score.output_embedding.copy_(output_embedding)
        return model.eval() if not language_model.training else model

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
        commit_description: str | None = None,
        tokenizer: Any = None,
        head_only: bool = False,
    ) -> Any:
        """Upload the model with the standard transformers mechanism, keeping hf_rgtg's model card.

        `PreTrainedModel.push_to_hub` would replace the card with a generic one; this creates the repository,
        saves the model (card included) and uploads the folder with the same transformers helpers. Pass the
        `tokenizer` to upload it in the same commit, and `head_only=True` to upload the head alone (see
        [`save_pretrained`]).
        """
        repo_id = hub_utils.hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            if head_only:
                self.save_pretrained(folder, repo_id=repo_id, head_only=True)
            else:
                self.save_pretrained(folder, max_shard_size=max_shard_size, repo_id=repo_id)
            if tokenizer is not None:
                tokenizer.save_pretrained(folder)
            card = ModelCard.load(Path(folder) / "README.md")
            card.data.tags = list(dict.fromkeys([*(card.data.tags or TAGS), *(tags or [])]))
            card.save(Path(folder) / "README.md")
            return upload_saved_model(
                self,
                folder,
                repo_id,
                commit_message=commit_message or "Upload prefix reward model",
                token=token,
                create_pr=create_pr,
                revision=revision,
                commit_description=commit_description,
            )

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    @staticmethod
    def _check_shape(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> None:
        name, tensor, dims, shape = (
            ("input_ids", input_ids, 2, "(batch_size, sequence_length)")
            if input_ids is not None
            else ("inputs_embeds", inputs_embeds, 3, "(batch_size, sequence_length, hidden_size)")
        )
        if tensor.dim() != dims:
            raise ValueError(
                f"`{name}` has shape {tuple(tensor.shape)}; expected {shape}. For one sequence, add the batch "
                f"dimension: `{name}[None]`."
            )
        if tensor.shape[0] == 0 or tensor.shape[1] == 0:
            raise ValueError(f"`{name}` has shape {tuple(tensor.shape)}: there is no token to score.")

    def _check_inputs(
        self,
        batch_size: int,
        seq_len: int,
        past_len: int,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> None:
        if attention_mask is None:
            return
        if attention_mask.dim() == 2:
            expected = (batch_size, past_len + seq_len)
            if tuple(attention_mask.shape) != expected:
                raise ValueError(
                    f"`attention_mask` has shape {tuple(attention_mask.shape)}, but the input has batch size "
                    f"{batch_size}, {seq_len} new tokens and {past_len} cached tokens, so it must have shape "
                    f"{expected}: one column per cached and new token."
                )
        elif attention_mask.dim() == 4:
            if position_ids is None:
                raise ValueError(
                    "A 4D `attention_mask` needs explicit `position_ids`: they cannot be derived from a 4D mask."
                )
        else:
            raise ValueError(
                f"`attention_mask` must be 2D (batch_size, sequence_length) or 4D, got shape "
                f"{tuple(attention_mask.shape)}."
            )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        output_next_token_rewards: bool | None = None,
        **kwargs,
    ) -> PrefixRewardOutput | tuple:
        r"""
        Score every prefix of the input.

        The arguments are those of a transformers model's forward (hence the length of this method), so that
        `generate()`, the `Trainer` and PEFT call it as they call any model.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids. Only the new tokens when `cache` is given.
            attention_mask (`torch.Tensor`, *optional*):
                `(batch_size, cached_length + sequence_length)`, 1 for real tokens and 0 for padding (either side).
                A 4D mask is passed through to the backbone as is and then needs `position_ids`.
            cache (`Cache`, *optional*):
                A cache returned by an earlier call with `use_cache=True` (decoder backbones only).
            use_cache (`bool`, *optional*):
                Whether to return the updated cache. Defaults to the backbone's setting.
            position_ids (`torch.LongTensor`, *optional*):
                Defaults to positions counted over non-pad tokens of `attention_mask`.
            inputs_embeds (`torch.FloatTensor`, *optional*):
                Embeddings to use instead of `input_ids`.
            return_dict (`bool`, *optional*):
                `False` returns a tuple of the output's fields that are set. Defaults to `config.return_dict`.
            past_key_values (`Cache`, *optional*):
                The name of `cache` before transformers 5.24, accepted on every version.
            output_next_token_rewards (`bool`, *optional*):
                For a `"vocab"` head, also return its whole output `next_token_rewards` `(batch_size,
                sequence_length, vocab_size)` (training reads it). Defaults to `False`.

        Returns:
            [`PrefixRewardOutput`] with `reward` `(batch_size,)`, and on a causal backbone `rewards`
            `(batch_size, sequence_length)` (see [`PrefixRewardOutput`] for what they mean for each kind of head).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if "labels" in kwargs:
            raise ValueError(
                "PrefixRewardModel computes no loss from `labels`: it scores sequences. Train it on preference pairs "
                "with `PrefixRewardTrainer` (or `prefix_bradley_terry_loss`)."
            )
        self._check_shape(input_ids, inputs_embeds)
        if self.config.is_vocab_head and input_ids is None:
            raise ValueError(
                "A `head_kind='vocab'` reward model reads each token's value from the hidden state before it, so it "
                "needs `input_ids`, not `inputs_embeds`."
            )
        if output_next_token_rewards and not self.config.is_vocab_head:
            raise ValueError(
                "`output_next_token_rewards=True` needs a `head_kind='vocab'` head; this one is scalar."
            )
        tokens = input_ids if input_ids is not None else inputs_embeds
        batch_size, seq_len = tokens.shape[:2]
        incremental = self.supports_incremental_scoring
        cache = self._resolved_cache(cache, past_key_values, incremental)
        past_len = cache.get_seq_length() if cache is not None else 0
        self._check_inputs(batch_size, seq_len, past_len, attention_mask, position_ids)
        backbone_kwargs = dict(kwargs)
        if incremental:
            backbone_kwargs.update(cache_kwargs(cache), use_cache=use_cache)
        position_ids = self._checked_position_ids(position_ids, attention_mask, tokens, past_len, incremental)
        if position_ids is not None:
            backbone_kwargs["position_ids"] = position_ids

        inputs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **backbone_kwargs,
        )
        if incremental and self.config.is_vocab_head:
            output = self._vocab_output(inputs, past_len, bool(output_next_token_rewards))
        elif incremental:
            rewards, outputs = self._rewards(**inputs)
            output = self._output(rewards, outputs, attention_mask, output_hidden_states)
        else:
            output = self._sequence_output(**inputs)
        return (
            output
            if (return_dict if return_dict is not None else self.config.return_dict)
            else output.to_tuple()
        )

    def _vocab_output(
        self, inputs: dict[str, Any], past_len: int, output_next_token_rewards: bool
    ) -> PrefixRewardOutput:
        """The output of [`forward`] for a vocab head: every position's gathered reward (NaN at the first new token
        on top of a cache), and with `output_next_token_rewards` the head's whole output."""
        hidden, outputs = self._hidden(**inputs)
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        rewards = self.vocab_rewards(hidden, input_ids, attention_mask)
        if past_len:
            rewards[:, 0] = float("nan")
        output = self._output(rewards, outputs, attention_mask, inputs["output_hidden_states"])
        if output_next_token_rewards:
            output.next_token_rewards = self.vocab_values(hidden)
        return output

    @staticmethod
    def _output(
        rewards: torch.Tensor,
        outputs: ModelOutput,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool | None,
    ) -> PrefixRewardOutput:
        """The output of [`forward`]: every position's reward, each row's reward at its last real token, and what
        the backbone returned besides."""
        batch_size, seq_len = rewards.shape
        mask_2d = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        index = last_token_index(mask_2d, batch_size, seq_len).to(rewards.device)
        reward = rewards[torch.arange(batch_size, device=rewards.device), index]
        return PrefixRewardOutput(
            rewards=rewards,
            reward=reward,
            **cache_kwargs(output_cache(outputs)),
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=getattr(outputs, "attentions", None),
        )

    def _sequence_output(
        self,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **backbone_kwargs,
    ) -> PrefixRewardOutput:
        """The output of [`forward`] on a backbone that is not causal: each row's reward as a whole sequence, from
        its rows moved to right padding first; no per-position `rewards`."""
        if attention_mask is not None and attention_mask.dim() == 2:
            order = right_padding_order(attention_mask)
            if order is not None:
                attention_mask = attention_mask.gather(1, order.to(attention_mask.device))
                backbone_kwargs = {name: _reordered(value, order) for name, value in backbone_kwargs.items()}
        if self.config.head_type == "classifier":
            outputs = self.backbone(
                attention_mask=attention_mask,
                output_hidden_states=output_hidden_states,
                return_dict=True,
                **backbone_kwargs,
            )
            reward = outputs.logits[:, 0].float()
        else:
            hidden, outputs = self._hidden(
                attention_mask=attention_mask, output_hidden_states=output_hidden_states, **backbone_kwargs
            )
            mask_2d = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
            index = last_token_index(mask_2d, *hidden.shape[:2]).to(hidden.device)
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
            reward = self.score(last).squeeze(-1).float()
        return PrefixRewardOutput(
            reward=reward,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=getattr(outputs, "attentions", None),
        )

    def _resolved_cache(
        self, cache: Cache | None, past_key_values: Cache | None, incremental: bool
    ) -> Cache | None:
        """The cache given as `cache` or by its old name `past_key_values` (not both); refused on a backbone that is
        not `incremental`."""
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("Pass the cache once: `cache` and `past_key_values` are the same argument.")
            cache = past_key_values
        if cache is not None and not incremental:
            raise ValueError(
                f"`cache` was given, but this reward model's backbone "
                f"({self.config.text_config.model_type}) is not a causal decoder and cannot be scored "
                "incrementally. Re-encode the whole sequence instead."
            )
        return cache

    def _checked_position_ids(
        self,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        tokens: torch.Tensor,
        past_len: int,
        incremental: bool,
    ) -> torch.Tensor | None:
        """The position ids for the backbone, once they are known to fit in its positions. An `incremental`
        backbone gets them counted over the attention mask's real tokens (or from the cache's length) when they are
        not given; other backbones number the positions themselves, and only the input's length is checked."""
        batch_size, seq_len = tokens.shape[:2]
        if incremental and position_ids is None:
            if attention_mask is not None:
                position_ids = position_ids_from_attention_mask(attention_mask, seq_len)
            else:
                position_ids = torch.arange(past_len, past_len + seq_len, device=tokens.device).expand(
                    batch_size, -1
                )
        if position_ids is not None:
            if position_ids.numel():
                self.check_length(int(position_ids.max()) + 1)
        else:
            self.check_length(seq_len)
        return position_ids

    def _hidden(
        self, output_hidden_states: bool | None = None, **backbone_kwargs
    ) -> tuple[torch.Tensor, ModelOutput]:
        """The backbone's forward, with no checks: `(the hidden states the head reads, outputs)`."""
        need_hidden = self.config.head_layer is not None
        outputs = self.backbone(
            output_hidden_states=bool(output_hidden_states or need_hidden),
            return_dict=True,
            **backbone_kwargs,
        )
        hidden = (
            outputs.last_hidden_state if not need_hidden else outputs.hidden_states[self.config.head_layer]
        )
        return hidden, outputs

    def _rewards(
        self, output_hidden_states: bool | None = None, **backbone_kwargs
    ) -> tuple[torch.Tensor, ModelOutput]:
        """The backbone's forward and the head at every position, with no checks: `(rewards (batch, seq) in
        float32, outputs)`."""
        hidden, outputs = self._hidden(output_hidden_states=output_hidden_states, **backbone_kwargs)
        return self.score(hidden).squeeze(-1).float(), outputs

    def score_on_cache(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        position_ids: torch.LongTensor,
        cache: Cache,
    ) -> torch.Tensor:
        """Rewards `(batch, seq)` of `input_ids` fed on top of `cache`, extending the cache in place.

        The unchecked hot path of guided decoding: the caller guarantees a decoder backbone with a scalar head, an
        attention mask that covers the cache and the new tokens (2D or 4D), exact position ids within the backbone's
        range. Use [`~PrefixRewardModel.forward`] everywhere else.
        """
        rewards, _ = self._rewards(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **cache_kwargs(cache),
        )
        return rewards

    def check_length(self, length: int) -> None:
        """Refuse an input that reaches position `length` (1-based) when the backbone has fewer positions: the one
        check of the reward model's position limit, which the forward and every scorer call."""
        if self.max_positions is not None and length > self.max_positions:
            raise ValueError(
                f"The input reaches position {length}, but the reward model's backbone "
                f"({self.config.text_config.model_type}) has at most {self.max_positions} positions "
                "(`max_position_embeddings`). Truncate the prompt or generate fewer tokens."
            )


__all__ = [
    "PrefixRewardModel",
    "PrefixRewardOutput",
    "PrefixRewardPreTrainedModel",
    "right_padding_order",
]
