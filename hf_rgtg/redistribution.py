"""Rewards of whole sequences and of their prefixes, read from a reward model's per-position head: one forward per
batch of sequences, no per-prefix re-encoding.

- [`score_sequences`]: the reward of each of `generate()`'s output sequences, read at its last real token;
- [`prefix_rewards`]: each generated token with the reward of the prefix it ends, `R(x, y<=t)`, from one forward
  pass of a causal reward model;
- [`sequence_reward`]: the reward of one whole continuation;
- [`GenerationResult`]: a continuation's text with both, as a caller shows them next to its text
  (`hf-rgtg generate --show-rewards`, a pipeline);
- [`token_rewards`]: reward redistribution (RED): each response token's credit `r_t = R(x, y<=t) - R(x, y<t)`,
  with `R(x, y<1) = R(x)` the prompt's own score, so that the credits sum to `R(x, y) - R(x)`; and
  [`dense_rewards`], the same as a padded tensor for RL.

The last three read the reward model, the end-of-sequence ids and the pad id of a [`RewardGuidance`] (anything
with those three attributes), the guided run's or one built for scoring only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from .modeling import PrefixRewardModel
from .tokenization import Prompt, reward_prompt_ids, special_token_ids
from .trace import output_sequences
from .tracking import leading_padding_mask
from .validation import checked_positive_int, checked_prompt_length, checked_token_id, checked_token_ids

logger = logging.getLogger(__name__)


class ScoringSettings(Protocol):
    """What the functions below read of a [`RewardGuidance`]."""

    reward_model: PrefixRewardModel
    eos_token_id: list[int] | None
    pad_token_id: int | None


def generated_attention_mask(
    sequences: torch.Tensor,
    prompt_length: int,
    prompt_attention_mask: torch.Tensor | None,
    eos_token_id: Sequence[int] | None,
    pad_token_id: int | None,
) -> torch.Tensor:
    """The attention mask of `generate()`'s output: prompt padding masked, and everything after the first EOS."""
    prompt = sequences[:, :prompt_length]
    if prompt_attention_mask is None:
        prompt_mask = leading_padding_mask(prompt, pad_token_id)
    else:
        prompt_mask = prompt_attention_mask.to(sequences.device, torch.long)
        if prompt_mask.shape[0] != sequences.shape[0]:
            prompt_mask = prompt_mask.repeat_interleave(sequences.shape[0] // prompt_mask.shape[0], dim=0)
    generated = sequences[:, prompt_length:]
    if eos_token_id:
        is_eos = torch.isin(generated, torch.tensor(eos_token_id, device=sequences.device)).long()
        # A position is kept while no EOS came strictly before it.
        before = is_eos.cumsum(-1) - is_eos
        generated_mask = (before == 0).long()
    else:
        generated_mask = torch.ones_like(generated)
    return torch.cat([prompt_mask, generated_mask], dim=1)


@torch.no_grad()
def score_sequences(
    reward_model: PrefixRewardModel,
    sequences: torch.Tensor | ModelOutput,
    prompt_length: int,
    prompt_attention_mask: torch.Tensor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """The reward of each of `generate()`'s output sequences at its last real token. See
    [`RewardGuidance.sequence_rewards`]."""
    sequences = output_sequences(sequences)
    prompt_length = checked_prompt_length(prompt_length, sequences.shape[1])
    mask = generated_attention_mask(
        sequences,
        prompt_length,
        prompt_attention_mask,
        checked_token_ids("eos_token_id", eos_token_id),
        checked_token_id("pad_token_id", pad_token_id),
    )
    device = reward_model.device
    rewards = [
        reward_model(
            sequences[i : i + batch_size].to(device),
            attention_mask=mask[i : i + batch_size].to(device),
            return_dict=True,
        ).reward
        for i in range(0, len(sequences), batch_size)
    ]
    return torch.cat(rewards).cpu()


@dataclass
class GenerationResult:
    """One generated continuation with its rewards, ready to show.

    It sits with the functions that compute its `steps` and `reward`, so that a caller gets all three from one
    module.

    Args:
        label (`str`): how the continuation was produced ("guided (beta=1.0, top-k=10)", "unguided").
        text (`str`): the decoded continuation, without special tokens.
        steps (`list[tuple[int, float]]`, *optional*): each generated token with the reward of the prefix it ends
            (from the guidance trace, or [`prefix_rewards`]); `None` when they are not known.
        reward (`float`): the reward model's score of the whole sequence ([`sequence_reward`]).

    Examples:

    ```python
    >>> from hf_rgtg.redistribution import GenerationResult
    >>> result = GenerationResult(label="unguided", text=" fine", steps=[(17, 0.25)], reward=0.25)
    >>> result.steps[-1][1] == result.reward
    True
    ```
    """

    label: str
    text: str
    steps: list[tuple[int, float]] | None
    reward: float


def through_first_eos(tokens: Sequence[int], eos_token_id: Sequence[int] | None) -> list[int]:
    """`tokens` up to and including the first end-of-sequence token (what `generate()` appends after it is
    padding); all of them when there is none.

    Examples:

    ```python
    >>> from hf_rgtg.redistribution import through_first_eos
    >>> through_first_eos([8, 9, 0, 0], eos_token_id=[0]), through_first_eos([8, 9], eos_token_id=None)
    ([8, 9, 0], [8, 9])
    ```
    """
    eos = set(eos_token_id or ())
    tokens = [int(token) for token in tokens]
    end = next((i + 1 for i, token in enumerate(tokens) if token in eos), len(tokens))
    return tokens[:end]


@torch.no_grad()
def prefix_rewards(
    guidance: ScoringSettings, sequence: torch.Tensor, prompt_length: int
) -> list[tuple[int, float]] | None:
    """Each generated token of `sequence` with the reward of the prefix it ends, up to and including the first
    end-of-sequence token (what follows it is padding).

    One forward pass of the reward model gives every prefix's reward, which only causal backbones compute
    (elsewhere every position sees the whole input); for the others this returns `None`. For a guided run the
    guidance trace already holds these rewards ([`GuidanceTrace.steps`]); this serves for any other sequence, an
    unguided one for instance.

    Args:
        guidance ([`RewardGuidance`]): gives the reward model and the end-of-sequence ids.
        sequence (`torch.LongTensor` of shape `(length,)`): one row of `generate()`'s output, prompt included.
        prompt_length (`int`): the prompt's length in `sequence`.

    Returns:
        `list[tuple[int, float]]` or `None`: `(token id, reward)` per generated token, `[]` when none was
        generated; `None` for a reward model that cannot score prefixes in one pass.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import LlamaConfig
    >>> from hf_rgtg import PrefixRewardConfig, PrefixRewardModel, RewardGuidance, prefix_rewards

    >>> text_config = LlamaConfig(
    ...     vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    ... )
    >>> rm = PrefixRewardModel(PrefixRewardConfig(text_config=text_config)).eval()
    >>> # A 3-token prompt, then 8 and 9, then the end-of-sequence token 0 and padding after it.
    >>> sequence = torch.tensor([5, 6, 7, 8, 9, 0, 0])
    >>> steps = prefix_rewards(RewardGuidance(rm, eos_token_id=0), sequence, prompt_length=3)
    >>> [token for token, _ in steps]
    [8, 9, 0]
    >>> abs(steps[1][1] - rm(sequence[None, :5]).reward.item()) < 1e-5  # the reward of the prefix 5 6 7 8 9
    True
    ```
    """
    reward_model = guidance.reward_model
    if not reward_model.supports_incremental_scoring:
        return None
    tokens = through_first_eos(sequence[prompt_length:].tolist(), guidance.eos_token_id)
    if not tokens:
        return []
    ids = sequence[: prompt_length + len(tokens)].unsqueeze(0).to(reward_model.device)
    rewards = reward_model(ids, return_dict=True).rewards[0, prompt_length:].float().cpu().tolist()
    return list(zip(tokens, rewards, strict=True))


def sequence_reward(
    guidance: ScoringSettings, sequences: torch.Tensor, inputs: Mapping[str, torch.Tensor]
) -> float:
    """The reward model's score of the first sequence `generate()` returned, read at its last real token (the
    prompt's padding and everything after the first end-of-sequence token are masked).

    Args:
        guidance ([`RewardGuidance`]): gives the reward model, the end-of-sequence ids and the pad id.
        sequences (`torch.LongTensor` of shape `(rows, length)`): the output of `generate()`.
        inputs (`Mapping[str, torch.Tensor]`): what `generate()` was given: `input_ids` and `attention_mask`, e.g.
            from [`encode_prompt`].

    Returns:
        `float`: the first row's reward ([`RewardGuidance.sequence_rewards`] gives every row's).

    Examples:

    ```python
    >>> import torch
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward, RewardGuidance, sequence_reward

    >>> rm = AutoModelForPrefixReward.from_config(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2)).eval()
    >>> # The prompt 5 6 7 after a pad token, then 8, the end-of-sequence token 0 and padding.
    >>> inputs = {"input_ids": torch.tensor([[0, 5, 6, 7]]), "attention_mask": torch.tensor([[0, 1, 1, 1]])}
    >>> sequences = torch.tensor([[0, 5, 6, 7, 8, 0, 0]])
    >>> reward = sequence_reward(RewardGuidance(rm, eos_token_id=0, pad_token_id=0), sequences, inputs)
    >>> abs(reward - rm(sequences[:, 1:6]).reward.item()) < 1e-5  # the reward of 5 6 7 8 and the EOS
    True
    ```
    """
    rewards = score_sequences(
        guidance.reward_model,
        sequences,
        prompt_length=inputs["input_ids"].shape[1],
        prompt_attention_mask=inputs["attention_mask"],
        eos_token_id=guidance.eos_token_id,
        pad_token_id=guidance.pad_token_id,
    )
    return float(rewards[0])


#: A prompt: plain text, or chat messages (`[{"role": ..., "content": ...}, ...]`) for the tokenizer's template.


@dataclass
class TokenRewards:
    """The token rewards of one response, aligned list by list (one entry per response token).

    Args:
        token_ids (`list[int]`): the response's token ids.
        tokens (`list[str]`): each token's text as it appears in the response: the characters it completes. A
            character split over several tokens (a multi-byte one under byte-level BPE) belongs to the token that
            completes it; the tokens before it get `""`.
        offsets (`list[tuple[int, int]]`): each token's `(start, end)` characters in the response, as `tokens`.
        prefix_rewards (`list[float]`): `R(x, y<=t)`, the reward of the prompt and the response up to each token.
        rewards (`list[float]`): `r_t = R(x, y<=t) - R(x, y<t)`, each token's share.
        prompt_reward (`float`): `R(x)`, the prompt's own reward.

    Examples:

    ```python
    >>> from hf_rgtg import TokenRewards
    >>> result = TokenRewards([7, 8], ["Hi", "!"], [(0, 2), (2, 3)], [0.5, 1.25], [0.25, 0.75], prompt_reward=0.25)
    >>> result.total, result.reward
    (1.0, 1.25)
    ```
    """

    token_ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    prefix_rewards: list[float]
    rewards: list[float]
    prompt_reward: float

    @property
    def total(self) -> float:
        """`sum_t r_t`, which is `R(x, y) - R(x)`."""
        return float(sum(self.rewards))

    @property
    def reward(self) -> float:
        """`R(x, y)`, the reward of the whole response (the prompt's for an empty one)."""
        return self.prefix_rewards[-1] if self.prefix_rewards else self.prompt_reward

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> TokenRewards:
        """The token rewards of `record`, a dict of their fields as the pipelines give them (its `"total"` and
        `"reward"`, which the fields determine, are passed over)."""
        return cls(**{item.name: record[item.name] for item in dataclasses.fields(cls)})


def weighted_token_rewards(results: Sequence[TokenRewards], weights: Sequence[float]) -> TokenRewards:
    """The token rewards of one response under several reward models, combined as guidance combines their rewards:
    every reward, credit and the prompt's reward is `sum_i weights[i] * results[i]`'s. The credits are differences
    of prefix rewards, so the combined credits still sum to the combined `R(x, y) - R(x)`.

    Args:
        results (list of [`TokenRewards`]): the same response's token rewards under each reward model.
        weights (list of `float`): one weight per reward model (guidance's `beta`s).

    Examples:

    ```python
    >>> from hf_rgtg import TokenRewards
    >>> from hf_rgtg.redistribution import weighted_token_rewards
    >>> a = TokenRewards([7], ["Hi"], [(0, 2)], [1.0], [0.5], prompt_reward=0.5)
    >>> b = TokenRewards([7], ["Hi"], [(0, 2)], [-1.0], [-0.5], prompt_reward=-0.5)
    >>> both = weighted_token_rewards([a, b], [1.0, 0.5])
    >>> both.prefix_rewards, both.rewards, both.prompt_reward
    ([0.5], [0.25], 0.25)
    ```
    """
    if len(results) != len(weights) or not results:
        raise ValueError(
            f"Got {len(results)} token rewards for {len(weights)} weights; give one weight each."
        )

    def weighted(values: Sequence[float]) -> float:
        total = weights[0] * values[0]
        for weight, value in zip(weights[1:], values[1:], strict=True):
            total += weight * value
        return total

    first = results[0]
    return TokenRewards(
        token_ids=list(first.token_ids),
        tokens=list(first.tokens),
        offsets=list(first.offsets),
        prefix_rewards=[
            weighted(values) for values in zip(*(r.prefix_rewards for r in results), strict=True)
        ],
        rewards=[weighted(values) for values in zip(*(r.rewards for r in results), strict=True)],
        prompt_reward=weighted([r.prompt_reward for r in results]),
    )


def _response_tokens(
    tokenizer: PreTrainedTokenizerBase, response: str
) -> tuple[list[int], list[str], list[tuple[int, int]]]:
    """The response's token ids, each token's text and its character span, without special tokens. A fast
    tokenizer's offsets give the spans; otherwise each token's text is what it adds to the decoded response."""
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        ends = [end for _, end in encoding["offset_mapping"]]
        ids = list(encoding["input_ids"])
    else:
        ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
        ends = _decoded_ends(tokenizer, ids)
    spans = _spans(ends)
    return ids, [response[a:b] for a, b in spans], spans


def token_texts(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """Each token's text as it appears in `tokenizer.decode(ids)`: the characters it completes, so that a
    character split over several tokens (a multi-byte one under byte-level BPE) shows whole on the token that
    completes it, and the tokens before it show `""`, where decoding each token alone shows `\ufffd`.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg.redistribution import token_texts
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, unk_token="a")))
    >>> token_texts(tokenizer, [0, 0])
    ['a', ' a']
    ```
    """
    ids = [int(token) for token in ids]
    text = tokenizer.decode(ids)
    return [text[a:b] for a, b in _spans(_decoded_ends(tokenizer, ids))]


def _decoded_ends(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    """Where each token's text ends in `tokenizer.decode(ids)`: the length of the decoded prefix, an incomplete
    character at its end not counted."""
    return [len(tokenizer.decode(ids[: i + 1]).rstrip("\ufffd")) for i in range(len(ids))]


def _spans(ends: list[int]) -> list[tuple[int, int]]:
    """Each token's `(start, end)` from where the tokens end: a token inside a character that an earlier one
    completed adds nothing."""
    spans, start = [], 0
    for end in ends:
        end = max(end, start)
        spans.append((start, end))
        start = end
    return spans


def _padded(
    sequences: Sequence[Sequence[int]], pad_token_id: int, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` of `sequences` padded to the longest on `padding_side`."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        columns = slice(width - len(sequence), width) if padding_side == "left" else slice(0, len(sequence))
        ids[row, columns] = torch.tensor(sequence)
        mask[row, columns] = 1
    return ids, mask


def _per_position_rewards(
    reward_model: PrefixRewardModel, sequences: list[list[int]], pad_token_id: int, padding_side: str
) -> list[list[float]]:
    """Every position's reward of each sequence, from one forward over the padded batch."""
    ids, mask = _padded(sequences, pad_token_id, padding_side)
    width = ids.shape[1]
    device = reward_model.device
    rewards = (
        reward_model(ids.to(device), attention_mask=mask.to(device), return_dict=True).rewards.float().cpu()
    )
    return [
        rewards[row, width - len(sequence) :].tolist()
        if padding_side == "left"
        else rewards[row, : len(sequence)].tolist()
        for row, sequence in enumerate(sequences)
    ]


def _re_encoded_rewards(
    reward_model: PrefixRewardModel,
    sequences: list[list[int]],
    starts: list[int],
    pad_token_id: int,
    batch_size: int,
) -> list[list[float]]:
    """Each prefix's reward from its own forward: for backbones that are not causal, where a position's output
    depends on what follows it. Quadratic in the length."""
    prefixes = [
        (row, sequence[:end])
        for row, (sequence, start) in enumerate(zip(sequences, starts, strict=True))
        for end in range(start, len(sequence) + 1)
    ]
    values: list[list[float]] = [[] for _ in sequences]
    for i in range(0, len(prefixes), batch_size):
        chunk = prefixes[i : i + batch_size]
        ids, mask = _padded([prefix for _, prefix in chunk], pad_token_id)
        device = reward_model.device
        rewards = (
            reward_model(ids.to(device), attention_mask=mask.to(device), return_dict=True)
            .reward.float()
            .cpu()
        )
        for (row, _), reward in zip(chunk, rewards.tolist(), strict=True):
            values[row].append(reward)
    return values


def _as_pairs(prompts: Any, responses: Any) -> tuple[list[Prompt], list[str], bool]:
    """`(prompts, responses, one)`: lists of equal length, and whether a single pair was given."""
    one = isinstance(responses, str)
    if one:
        prompts, responses = [prompts], [responses]
    elif isinstance(prompts, str) or (prompts and isinstance(prompts[0], Mapping)):
        prompts = [prompts] * len(responses)  # one prompt for several responses
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(
            f"Got {len(prompts)} prompts for {len(responses)} responses; give one prompt per response."
        )
    for index, response in enumerate(responses):
        if not isinstance(response, str):
            raise TypeError(f"Response {index} has to be a string, got {type(response).__name__}.")
    return prompts, responses, one


def _scored(
    reward_model: PrefixRewardModel,
    tokenizer: PreTrainedTokenizerBase,
    pieces: list[tuple[list[int], list[int], list[str], list[tuple[int, int]]]],
    batch_size: int,
    padding_side: str,
) -> list[TokenRewards]:
    """The token rewards of `(prompt ids, response ids, tokens, offsets)` pieces."""
    batch_size = checked_positive_int("batch_size", batch_size, "e.g. `batch_size=16`")
    if padding_side not in ("left", "right"):
        raise ValueError(f"`padding_side` (={padding_side!r}) has to be 'left' or 'right'.")
    for index, (prompt_ids, ids, _, _) in enumerate(pieces):
        if not prompt_ids:
            raise ValueError(
                f"Prompt {index} is empty after tokenization; the reward of `R(x)` needs a token."
            )
        try:
            reward_model.check_length(len(prompt_ids) + len(ids))
        except ValueError as error:
            raise ValueError(
                f"Pair {index} ({len(prompt_ids)} prompt + {len(ids)} response tokens): {error}"
            ) from None
    pad = special_token_ids(tokenizer)[1]  # the tokenizer's pad token, else its EOS
    pad = 0 if pad is None else pad  # padding is masked: any id will do
    sequences = [prompt_ids + ids for prompt_ids, ids, _, _ in pieces]
    if reward_model.supports_incremental_scoring:
        values = []
        for i in range(0, len(sequences), batch_size):
            values += _per_position_rewards(reward_model, sequences[i : i + batch_size], pad, padding_side)
        values = [row[len(prompt_ids) - 1 :] for row, (prompt_ids, *_) in zip(values, pieces, strict=True)]
    else:
        logger.warning(
            "token_rewards re-encodes every prefix: this reward model's backbone is not causal, so one forward does "
            "not give each prefix its own reward. The cost is quadratic in the response's length."
        )
        values = _re_encoded_rewards(reward_model, sequences, [len(p) for p, *_ in pieces], pad, batch_size)
    return [
        TokenRewards(
            token_ids=ids,
            tokens=tokens,
            offsets=offsets,
            prefix_rewards=row[1:],
            rewards=[after - before for before, after in zip(row[:-1], row[1:], strict=True)],
            prompt_reward=row[0],
        )
        for row, (_, ids, tokens, offsets) in zip(values, pieces, strict=True)
    ]


@torch.no_grad()
def token_rewards_of_ids(
    reward_model: PrefixRewardModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    padding_side: str = "right",
) -> list[TokenRewards]:
    """[`token_rewards`] of responses given as token ids (what `generate()` produced), after prompts given as ids.

    Each token's text and offsets index `tokenizer.decode(response)`, special tokens included.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import GPT2Config, PreTrainedTokenizerFast
    >>> from hf_rgtg import AutoModelForPrefixReward
    >>> from hf_rgtg.redistribution import token_rewards_of_ids

    >>> backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1, "there": 2}, unk_token="[UNK]"))
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    >>> rm = AutoModelForPrefixReward.from_config(GPT2Config(vocab_size=3, n_embd=16, n_layer=1, n_head=2)).eval()
    >>> [result.token_ids for result in token_rewards_of_ids(rm, tokenizer, [[1]], [[2, 2]])]
    [[2, 2]]
    ```
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(
            f"Got {len(prompt_ids)} prompts for {len(response_ids)} responses; give one per response."
        )
    pieces = []
    for prompt, response in zip(prompt_ids, response_ids, strict=True):
        ids = [int(token) for token in response]
        spans = _spans(_decoded_ends(tokenizer, ids))
        pieces.append(([int(token) for token in prompt], ids, token_texts(tokenizer, ids), spans))
    return _scored(reward_model, tokenizer, pieces, batch_size, padding_side)


@torch.no_grad()
def token_rewards(
    reward_model: PrefixRewardModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompt | Sequence[Prompt],
    responses: str | Sequence[str],
    *,
    batch_size: int = 16,
    padding_side: str = "right",
) -> TokenRewards | list[TokenRewards]:
    """Token-level rewards by reward redistribution: each response token's credit `r_t = R(x, y<=t) - R(x, y<t)`.

    `R` is the reward model's prefix reward and `R(x, y<1) = R(x)` the prompt's own, so the credits telescope:
    `sum_t r_t = R(x, y) - R(x)`. A causal reward model gives every prefix's reward in one forward per batch of
    sequences (its per-position head); a sequence classifier loaded with [`AutoModelForPrefixReward`] is read the
    same way (ARGS mode), its logit at each position taken as that prefix's reward. A reward model with a backbone
    that is not causal re-encodes every prefix, which is quadratic in the length, and says so once.

    Args:
        reward_model ([`PrefixRewardModel`]): the reward model.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer.
        prompts (`str`, chat messages, or a list of them): the prompt of each response, or one prompt for all.
            Chat messages go through the tokenizer's chat template with its generation prompt; text is
            tokenized with the tokenizer's special tokens, as training does.
        responses (`str` or list of `str`): the responses, tokenized without special tokens.
        batch_size (`int`, *optional*, defaults to 16): sequences per forward.
        padding_side (`str`, *optional*, defaults to `"right"`): how the batch is padded; the rewards do not
            depend on it.

    Returns:
        [`TokenRewards`] for one pair (a string response), else a list of them.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import GPT2Config, PreTrainedTokenizerFast
    >>> from hf_rgtg import AutoModelForPrefixReward, token_rewards

    >>> backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1, "there": 2, "friend": 3}, unk_token="[UNK]"))
    >>> backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[UNK]")
    >>> rm = AutoModelForPrefixReward.from_config(GPT2Config(vocab_size=4, n_embd=16, n_layer=1, n_head=2)).eval()
    >>> result = token_rewards(rm, tokenizer, "hi", "there friend")
    >>> result.tokens, result.offsets
    (['there', ' friend'], [(0, 5), (5, 12)])
    >>> abs(result.total - (result.reward - result.prompt_reward)) < 1e-6
    True
    ```
    """
    prompts, responses, one = _as_pairs(prompts, responses)
    pieces = []
    for index, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids, tokens, offsets = _response_tokens(tokenizer, response)
        pieces.append((reward_prompt_ids(tokenizer, prompt, index), ids, tokens, offsets))
    results = _scored(reward_model, tokenizer, pieces, batch_size, padding_side)
    return results[0] if one else results


def dense_rewards(results: Sequence[TokenRewards]) -> tuple[torch.Tensor, torch.Tensor]:
    """The token rewards of several responses as a right-padded `(batch, longest response)` float tensor, with its
    `(batch, longest response)` mask (1 on real tokens): per-token rewards for a policy-gradient loss.

    Examples:

    ```python
    >>> from hf_rgtg import TokenRewards, dense_rewards
    >>> a = TokenRewards([1, 2], ["a", "b"], [(0, 1), (1, 2)], [0.5, 1.0], [0.5, 0.5], prompt_reward=0.0)
    >>> b = TokenRewards([3], ["c"], [(0, 1)], [-1.0], [-1.0], prompt_reward=0.0)
    >>> rewards, mask = dense_rewards([a, b])
    >>> rewards.tolist(), mask.tolist()
    ([[0.5, 0.5], [-1.0, 0.0]], [[1, 1], [1, 0]])
    ```
    """
    width = max((len(result.rewards) for result in results), default=0)
    rewards = torch.zeros(len(results), width)
    mask = torch.zeros(len(results), width, dtype=torch.long)
    for row, result in enumerate(results):
        rewards[row, : len(result.rewards)] = torch.tensor(result.rewards, dtype=torch.float32)
        mask[row, : len(result.rewards)] = 1
    return rewards, mask


__all__ = [
    "GenerationResult",
    "Prompt",
    "TokenRewards",
    "dense_rewards",
    "token_rewards",
    "through_first_eos",
    "token_rewards_of_ids",
    "token_texts",
    "weighted_token_rewards",
    "ScoringSettings",
    "generated_attention_mask",
    "prefix_rewards",
    "score_sequences",
    "sequence_reward",
]
