"""The cached scorer: the reward model's key/value cache of each row's prefix, and all k candidates scored in one
forward on top of it, as siblings under a 4D attention mask, without copying the cache. Taken only for the
attention and position schemes it is proven exact on (`CACHE_EXACT_MODEL_TYPES`)."""

from __future__ import annotations

import torch
from transformers import PreTrainedConfig
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, DynamicLayer, get_layer_types_and_kwargs

from ..compat import output_cache
from ..incremental import IncrementalDecoder, KVBuffer, grown_capacity
from ..modeling import PrefixRewardModel, last_token_index, position_ids_from_attention_mask
from .base import CandidateScorer

#: Decoder families whose attention and position scheme the cached scorer is proven exact on: causal attention
#: over every earlier position, with absolute (learned) or rotary positions. `tests/test_architectures.py` walks
#: transformers' causal-LM mapping on every run: each family here must build from a tiny configuration and agree
#: with the reference scorer, and every other family must fall back to it. A family missing here is only slower.
CACHE_EXACT_MODEL_TYPES: frozenset[str] = frozenset(
    {
        "apertus",
        "apertus1p5_text",
        "arcee",
        "aria_text",
        "biogpt",
        "bitnet",
        "cohere",
        "diffllama",
        "doge",
        "ernie4_5",
        "ernie4_5_moe",
        "exaone",
        "falcon",
        "flex_olmo",
        "flint",
        "gemma",
        "glm",
        "glm4",
        "glm4_moe",
        "gpt-sw3",
        "gpt2",
        "gpt_bigcode",
        "gpt_neox",
        "gpt_neox_japanese",
        "granite",
        "granitemoe",
        "granitemoeshared",
        "helium",
        "hrm_text",
        "hunyuan_v1_dense",
        "hunyuan_v1_moe",
        "hy_v3",
        "hyperclovax",
        "internlm3",
        "iquestcoder",
        "jais2",
        "jetmoe",
        "laguna",
        "lfm2",
        "llama",
        "mellum",
        "minimax_m2",
        "minimax_m3_vl_text",
        "ministral3",
        "mistral",
        "mixtral",
        "nanochat",
        "nemotron",
        "olmo",
        "olmo2",
        "olmoe",
        "opt",
        "persimmon",
        "phi",
        "phi3",
        "phimoe",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "sarvam_moe",
        "seed_oss",
        "smollm3",
        "solar_open",
        "stablelm",
        "starcoder2",
        "xglm",
    }
)

#: Rotary variants whose frequencies do not depend on how long the sequence is so far. "dynamic" and "longrope"
#: change them once the sequence passes the original length, so a cache built earlier no longer matches.
STATIC_ROPE_TYPES = frozenset({"default", "linear", "llama3", "yarn"})


def _rope_types(config: PreTrainedConfig) -> set[str]:
    """The rotary variants a configuration uses (one per layer type where it has several), empty without RoPE."""
    parameters = getattr(config, "rope_parameters", None)
    if not isinstance(parameters, dict):
        return set()
    if "rope_type" in parameters:
        return {parameters["rope_type"]}
    return {value.get("rope_type", "default") for value in parameters.values() if isinstance(value, dict)}


def _dynamic_cache_layers(config: PreTrainedConfig) -> list[type]:
    """The layer classes a `DynamicCache` built for `config` would hold (the same dispatch transformers uses)."""
    layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    return [DYNAMIC_LAYER_TYPE_MAPPING[layer_type] for layer_type in layer_types]


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention bias of a boolean mask: 0 where `allowed`, the dtype's minimum elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )


def prefill_buffer(
    reward_model: PrefixRewardModel,
    decoder: IncrementalDecoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    limit: int | None = None,
) -> tuple[KVBuffer, torch.Tensor]:
    """Run left-padded prompts through `decoder` into a new buffer; return it with the prompts' rewards `(rows,)`.

    The buffer is filled directly, without a transformers cache to copy from (which would hold the prompts' keys
    and values twice). `limit` is the most positions the buffer will hold, if known (see [`KVBuffer`]).
    """
    rows, width = input_ids.shape
    buffer, hidden = prefill_hidden(decoder, input_ids, attention_mask, reward_model.dtype, limit)
    last = last_token_index(attention_mask, rows, width).to(input_ids.device)
    return buffer, reward_model.score(hidden[torch.arange(rows, device=input_ids.device), last]).squeeze(
        -1
    ).float()


def prefill_hidden(
    decoder: IncrementalDecoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    dtype: torch.dtype,
    limit: int | None = None,
) -> tuple[KVBuffer, torch.Tensor]:
    """Run left-padded prompts through `decoder` into a new buffer (of `dtype`); return it with the hidden states
    `(rows, width, hidden)` the decoder's depth gives at every column (see [`prefill_buffer`])."""
    rows, width = input_ids.shape
    device = input_ids.device
    positions = position_ids_from_attention_mask(attention_mask, width)
    like = torch.empty(0, dtype=dtype, device=device)
    buffer = KVBuffer.empty(decoder.num_layers, rows, *decoder.kv_shape, width, like, limit)
    # Causal attention to the real tokens; a padding position sees itself only, so no row is empty.
    index = torch.arange(width, device=device)
    allowed = (index[None, :] <= index[:, None]) & attention_mask.bool()[:, None, :]
    allowed |= torch.eye(width, dtype=torch.bool, device=device)
    hidden = decoder(input_ids, positions, allowed[:, None], buffer)
    buffer.commit(width)
    return buffer, hidden


def cache_problem(reward_model: PrefixRewardModel) -> str | None:
    """Why `reward_model`'s backbone cannot be run on a key/value cache exactly (`None` when it can): the checks of
    [`CachedScorer.unsupported_reason`] on the backbone, which every scorer that caches shares.

    Examples:

    ```python
    >>> from transformers import BertConfig, GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward
    >>> from hf_rgtg.scoring.cached import cache_problem

    >>> cache_problem(AutoModelForPrefixReward.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2))) is None
    True
    >>> bert = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    >>> cache_problem(AutoModelForPrefixReward.from_config(bert))[:40]
    'CachedScorer needs a decoder reward model'
    ```
    """
    config = reward_model.config.text_config
    model_type = config.model_type
    if not reward_model.supports_incremental_scoring:
        return f"CachedScorer needs a decoder reward model; {model_type!r} cannot be scored incrementally."
    if model_type not in CACHE_EXACT_MODEL_TYPES:
        return (
            f"CachedScorer is not proven exact on {model_type!r} reward models (its attention or position "
            f"scheme is not one the cached scorer is tested on)."
        )
    attn = config._attn_implementation
    if attn not in ("sdpa", "eager"):
        return (
            f"CachedScorer needs the reward model's `attn_implementation` to be 'sdpa' or 'eager' (got {attn!r}): "
            "sibling candidates need an arbitrary 4D attention mask. Reload the reward model with "
            "`attn_implementation='sdpa'`."
        )
    if getattr(config, "alibi", False) or getattr(getattr(config, "attn_config", None), "alibi", False):
        return "CachedScorer does not support ALiBi positions (`alibi=True`)."
    if "local" in (getattr(config, "attention_layers", None) or ()):
        return "CachedScorer does not support local attention layers (`attention_layers`)."
    dynamic = sorted(_rope_types(config) - STATIC_ROPE_TYPES)
    if dynamic:
        return (
            f"CachedScorer does not support rotary variants whose frequencies change with the length "
            f"({dynamic}): keys cached early would no longer match."
        )
    layers = {layer.__name__ for layer in _dynamic_cache_layers(config)} - {DynamicLayer.__name__}
    if layers:
        return (
            f"CachedScorer supports full attention only; this reward model's cache has {sorted(layers)} layers "
            "(sliding-window, chunked, linear-attention, convolution or other non-attention layers)."
        )
    return None


class CachedScorer(CandidateScorer):
    """Scores k candidates per row with one reward-model forward of k tokens on top of the prefix's cache.

    The k candidates are fed as siblings: each attends to the row's (unpadded) prefix and to itself, under a 4D
    attention mask, and all sit at the same position. Their keys and values land in the cache after the prefix;
    once `generate()` has chosen, the chosen candidate's entry moves to the prefix's end and the rest is dropped.
    The cache is never copied k times. A token that was not among the candidates (a finished row's padding, or a
    processor after this one that changed the choice) is encoded with one extra forward, so the cache always
    matches the rows' tokens.

    For GPT-2 and Llama-family backbones the steps run on an [`~incremental.IncrementalDecoder`] over a buffer
    that grows in place; other decoders go through the transformers forward and its `DynamicCache`. Needs a
    decoder reward model with `attn_implementation` `"sdpa"` or `"eager"`.

    Args:
        reward_model ([`PrefixRewardModel`]): a decoder prefix reward model.
        incremental (`bool`, *optional*, defaults to `True`): use the incremental decoder where the backbone's
            architecture allows it; `False` always uses the transformers forward.
    """

    description = "cached scorer, which keeps each prefix's keys and values"
    keeps_inputs = False

    @classmethod
    def unsupported_reason(cls, reward_model: PrefixRewardModel) -> str | None:
        """Why `reward_model` cannot be scored on a cache (`None` when it can).

        The cached scorer is taken only where it is proven exact: a decoder of a family in
        [`CACHE_EXACT_MODEL_TYPES`] with `"sdpa"` or `"eager"` attention, full causal attention in every layer
        (no sliding, chunked, local or hybrid layers), no ALiBi, and positions that are learned or rotary with a
        static variant ([`STATIC_ROPE_TYPES`]). Anything else, including a scheme that cannot be told from the
        configuration, gets a reason, and `scorer="auto"` takes the reference scorer.
        """
        if reward_model.config.is_vocab_head:
            return (
                "CachedScorer reads a scalar head at each candidate; this reward model has an all-token "
                "(`head_kind='vocab'`) head, which the vocab scorer reads from the hidden state before the candidates."
            )
        return cache_problem(reward_model)

    def __init__(self, reward_model: PrefixRewardModel, incremental: bool = True):
        super().__init__(reward_model)
        reason = self.unsupported_reason(reward_model)
        if reason is not None:
            raise ValueError(
                f'{reason} Use `scorer="reference"` (the `ReferenceScorer`), which re-encodes every prefix and is '
                "always exact."
            )
        self.decoder = (
            IncrementalDecoder.for_backbone(reward_model.backbone, reward_model.head_depth)
            if incremental
            else None
        )
        self.cache = None  # the transformers cache, without a decoder
        self.buffer: KVBuffer | None = None  # the decoder's buffer
        self._mask: torch.Tensor | None = None  # see `_sibling_mask`
        self._num_candidates = 0

    @torch.no_grad()
    def _reset(self) -> torch.Tensor:
        if self.decoder is not None:
            rewards = self._prefill()
        else:
            out = self.reward_model(
                self.input_ids, attention_mask=self.attention_mask, use_cache=True, return_dict=True
            )
            cache = output_cache(out)
            for layer in cache.layers:
                if type(layer) is not DynamicLayer:
                    raise ValueError(
                        f"CachedScorer supports plain dynamic caches; this reward model uses {type(layer).__name__} "
                        'layers (sliding-window or hybrid attention). Use `scorer="reference"`.'
                    )
            self.cache, rewards = cache, out.reward
        prompt_bias = _additive(self.attention_mask.bool(), self.reward_model.dtype)
        self._mask = self._mask_buffer(prompt_bias[:, None, None, :], 1, self.length + 1)
        self._own_bias: dict[int, torch.Tensor] = {}
        self._positions = self.attention_mask.sum(-1, keepdim=True)  # the next token's position, per row
        self._num_candidates = 0
        return rewards

    def _prefill(self) -> torch.Tensor:
        """Run the prompts through the incremental decoder into a new buffer; return their rewards."""
        self.reward_model.check_length(self.longest_prompt)
        self.buffer, rewards = prefill_buffer(
            self.reward_model, self.decoder, self.input_ids, self.attention_mask, self._most_positions()
        )
        return rewards

    def _most_positions(self) -> int | None:
        """The most buffer positions decoding can use, when the reward model's maximum length and the number of
        candidates are known: the longest row may grow to the maximum length (`score` refuses to go further), the
        padding of the other rows stays, and the last candidates need room after the prefix."""
        if self.max_positions is None or self.max_candidates is None:
            return None
        return self.prompt_width - self.longest_prompt + self.max_positions - 1 + self.max_candidates

    @staticmethod
    def _mask_buffer(prefix: torch.Tensor, k: int, needed: int) -> torch.Tensor:
        """A zero (attend) additive mask `(rows, 1, k, capacity)` whose first columns are `prefix` `(rows, 1, 1,
        length)`. Positions appended to a prefix are attended by every later token, so they need no writing."""
        rows, _, _, length = prefix.shape
        mask = prefix.new_zeros((rows, 1, k, grown_capacity(needed)))
        mask[..., :length] = prefix
        return mask

    def _ensure_mask(self, k: int, needed: int) -> torch.Tensor:
        """`self._mask`, rebuilt for `k` candidates and at least `needed` columns if it is not."""
        mask = self._mask
        if mask.shape[2] != k or mask.shape[3] < needed:
            mask = self._mask = self._mask_buffer(mask[:, :, :1, : self.length], k, needed)
        return mask

    def _sibling_mask(self, k: int) -> torch.Tensor:
        """The 4D additive mask of k sibling candidates: each sees its row's unpadded prefix and itself.

        A view of `self._mask`, which holds the prefix's bias in its first `length` columns (kept step by
        step) and, after them, the k candidates' block. Additive, as eager attention needs it and sdpa would
        otherwise convert a boolean mask in every layer.
        """
        length = self.length
        mask = self._ensure_mask(k, length + k)
        own = self._own_bias.get(k)
        if own is None:
            own = self._own_bias[k] = _additive(
                torch.eye(k, dtype=torch.bool, device=self.device), mask.dtype
            )
        mask[..., length : length + k] = own
        return mask[..., : length + k]

    @torch.no_grad()
    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        rows, k = candidates.shape
        self._drop_candidates()
        self.check_candidate_positions()
        positions = self._positions.expand(rows, k)
        candidates = candidates.to(self.device)
        if self.decoder is not None:
            hidden = self.decoder(candidates, positions, self._sibling_mask(k), self.buffer)
            rewards = self.reward_model.score(hidden).squeeze(-1).float()
        else:
            rewards = self.reward_model.score_on_cache(
                candidates, self._sibling_mask(k), positions, self.cache
            )
        self._num_candidates = k
        return rewards

    def check_candidate_positions(self) -> None:
        """Refuse candidates past the reward model's positions (the processor ends the rows before that)."""
        if not self.candidates_fit():
            # The longest row's length, known without reading the tensor: every step adds one real token to each row.
            self.reward_model.check_length(self.longest_prompt + self.length - self.prompt_width + 1)

    def _drop_candidates(self) -> None:
        # The decoder's buffer treats everything after the committed positions as scratch space.
        if self._num_candidates and self.cache is not None:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, : self.length]
                layer.values = layer.values[:, :, : self.length]
        self._num_candidates = 0

    def _advance(
        self, tokens: torch.Tensor, parents: torch.Tensor | None, chosen: torch.Tensor | None
    ) -> None:
        if parents is not None:
            self._positions = self._positions.index_select(0, parents)
            self._mask = self._mask.index_select(0, parents)
            if self.buffer is not None:
                self.buffer.reorder(parents)
            else:
                self.cache.reorder_cache(parents)
        positions = self._positions
        self._positions = positions + 1
        length = self.length
        # The appended token joins the prefix: every later token attends to it.
        self._ensure_mask(self._mask.shape[2], length + 1)[..., length] = 0
        if chosen is not None and self._num_candidates and bool((chosen >= 0).all()):
            self._keep_candidate(chosen)
            self._num_candidates = 0
            return
        # Some row appended a token that was not a candidate: encode the appended tokens explicitly.
        self._drop_candidates()
        bias = self._mask[:, :, :1, : length + 1]
        if self.decoder is not None:
            self.appended_hidden = self.decoder(tokens[:, None], positions, bias, self.buffer)[:, -1]
            self.buffer.commit(1)
        else:
            mask = (bias[:, 0, 0] == 0).long()
            self.reward_model(tokens[:, None], attention_mask=mask, cache=self.cache, use_cache=True)

    def _keep_candidate(self, chosen: torch.Tensor) -> None:
        """Move each row's chosen candidate's keys and values to the end of its prefix; drop the other ones."""
        if self.buffer is not None:
            self.buffer.keep_one(chosen)
            return
        length = self.length
        rows = torch.arange(len(chosen), device=self.device)
        source = length + chosen
        for layer in self.cache.layers:
            for name in ("keys", "values"):
                tensor = getattr(layer, name)
                tensor[:, :, length] = tensor[rows, :, source]
                setattr(layer, name, tensor[:, :, : length + 1])


__all__ = [
    "CACHE_EXACT_MODEL_TYPES",
    "STATIC_ROPE_TYPES",
    "CachedScorer",
    "cache_problem",
    "prefill_buffer",
    "prefill_hidden",
]
