"""Tokenizer bridging: a reward model that reads another tokenizer's tokens than the language model writes.

The language model's response tokens are decoded to text, and the reward model reads that text re-encoded with
its own tokenizer, after the prompt in its own format ([`~tokenization.reward_prompt_ids`], or a template of the
caller's). [`TextBridge`] holds the two tokenizers and that format. [`BridgedText`] follows one row's response and
keeps apart the reward-model tokens that appending text can no longer change (stable, worth caching) from the tail
that still can: a word may be continued, a space may join the next word, a character's bytes may be split over
several language-model tokens. Where the split lies is found by re-tokenising a small window of the text, with a
few probe continuations appended, never by assuming how a tokenizer merges.

Everything here is plain Python over token ids and text; the scorers in `scoring/` run the reward model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from .tokenization import Prompt, reward_prompt_ids, vocabulary_fingerprint

#: Continuations appended to a row's text to test where its tokenization is stable: a letter, a word, a digit, a
#: contraction, punctuation, whitespace, a newline, an accented letter, a CJK character and an emoji, each with and
#: without a leading space where that changes how tokenizers merge.
PROBES: tuple[str, ...] = ("a", " a", "A", "1", " 1", "'s", ".", ",", " ", "  ", "\n", "é", "中", "😀", "-")

#: How many stable tokens before the tail a window starts with. They anchor the window: its re-tokenisation has to
#: give them back, or the window is doubled (up to the whole text).
ANCHOR_TOKENS = 2

#: A last word longer than this many characters is left open only in its last half of that (see
#: `TextBridge.last_word_start`): text without spaces would otherwise never become stable.
LONG_WORD = 16

#: The most replacement characters held back at the end of a text: a UTF-8 character has at most 3 bytes before
#: its last one, and a decoder gives at most one replacement character per byte.
MAX_HELD_BACK = 3

#: How many tokenised windows a bridge remembers before it forgets them all: a step asks for about
#: `rows * (top_k + len(PROBES))` windows, and only the last steps' come back.
MEMO_SIZE = 4096

#: A held-back incomplete character: what decoding gives for the first bytes of a multi-byte UTF-8 sequence.
REPLACEMENT = "\ufffd"


@dataclass
class TextBridge:
    """The two tokenizers of a bridged pairing and the format the reward model reads.

    Args:
        language_tokenizer (`PreTrainedTokenizerBase`): the language model's tokenizer; its response tokens are
            decoded with it (special tokens, such as EOS or a chat template's end of turn, add no text).
        reward_tokenizer (`PreTrainedTokenizerBase`): the reward model's tokenizer.
        prompt_template (`str`, *optional*): how the reward model sees the prompt when its tokenizer has no chat
            template, as a format string with `{prompt}`, e.g. `"Question: {prompt}\\nAnswer: "`. The default is the
            prompt as it is, with the tokenizer's special tokens (`[CLS] prompt [SEP]` for BERT), as
            [`PrefixRewardTrainer`] trains. A tokenizer with a chat template always uses it.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg.bridging import TextBridge

    >>> def words(vocab):
    ...     backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="?"))
    ...     backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    ...     return PreTrainedTokenizerFast(tokenizer_object=backend)
    >>> bridge = TextBridge(words(["?", "hi", "there"]), words(["?", "there", "hi"]))
    >>> bridge.response_text([1, 2])
    'hi there'
    >>> bridge.encode(["hi there"])
    [[2, 1]]
    ```
    """

    language_tokenizer: PreTrainedTokenizerBase
    reward_tokenizer: PreTrainedTokenizerBase
    prompt_template: str | None = None
    _cache: dict[str, tuple[list[int], list[int], list[int]]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for name in ("language_tokenizer", "reward_tokenizer"):
            if not isinstance(getattr(self, name), PreTrainedTokenizerBase):
                raise TypeError(
                    f"`{name}` has to be a transformers tokenizer, got {type(getattr(self, name)).__name__}."
                )
        if not getattr(self.reward_tokenizer, "is_fast", False):
            raise ValueError(
                f"Bridging needs the reward model's tokenizer as a fast tokenizer (it reads where each token lies in "
                f"the text); {type(self.reward_tokenizer).__name__} is not one. Load it with "
                "`AutoTokenizer.from_pretrained(..., use_fast=True)`."
            )
        if self.prompt_template is not None and (
            not isinstance(self.prompt_template, str) or "{prompt}" not in self.prompt_template
        ):
            raise ValueError(
                f"`reward_prompt_template` (={self.prompt_template!r}) has to be a string with `{{prompt}}` in it, "
                'e.g. "Question: {prompt}\\nAnswer: ".'
            )

    def response_text(self, token_ids: Sequence[int]) -> str:
        """The text of the language model's response tokens, without special tokens; an incomplete character at
        the end (the first bytes of a multi-byte character, decoded as replacement characters) is held back until
        its last byte arrives: at most [`MAX_HELD_BACK`] replacement characters."""
        return self.response_texts([token_ids])[0]

    def response_texts(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        """[`response_text`] of several responses, decoded in one call of the Rust tokenizer when the language
        model's tokenizer is a fast one (what its `decode(..., skip_special_tokens=True)` runs, without the Python
        layer around it)."""
        backend = getattr(self.language_tokenizer, "backend_tokenizer", None)
        if backend is not None:
            texts = backend.decode_batch([list(ids) for ids in sequences], skip_special_tokens=True)
        else:
            texts = [
                self.language_tokenizer.decode(
                    list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
                for ids in sequences
            ]
        return [_held_back(text) for text in texts]

    def response_ids(self, token_ids: Sequence[int]) -> list[int]:
        """The reward model's tokens of the language model's response tokens: their text, re-encoded whole."""
        text = self.response_text(token_ids)
        return self.encode([text])[0] if text else []

    def prompt_text(self, token_ids: Sequence[int]) -> str:
        """A prompt given only as the language model's token ids, as text: decoded without special tokens (a chat
        template's role names stay; pass the prompts as text to avoid them)."""
        return self.language_tokenizer.decode(
            list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def prompt_ids(self, prompt: Prompt, index: int = 0) -> list[int]:
        """The prompt's token ids in the reward model's format. Chat messages for a reward model without a chat
        template are read as their last user message (a system prompt and earlier turns are left out)."""
        if not isinstance(prompt, str) and not self._has_chat_template:
            users = [message["content"] for message in prompt if message.get("role") == "user"]
            prompt = users[-1] if users else prompt[-1]["content"]
        if isinstance(prompt, str) and self.prompt_template is not None and not self._has_chat_template:
            return self.reward_tokenizer(self.prompt_template.format(prompt=prompt))["input_ids"]
        if isinstance(prompt, str) and self._has_chat_template:
            prompt = [{"role": "user", "content": prompt}]
        return reward_prompt_ids(self.reward_tokenizer, prompt, index)

    @property
    def _has_chat_template(self) -> bool:
        return bool(getattr(self.reward_tokenizer, "chat_template", None))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """The reward model's tokens of each text, without special tokens."""
        return [ids for ids, _, _ in self.encode_spans(texts)]

    def encode_spans(self, texts: Sequence[str]) -> list[tuple[list[int], list[int], list[int]]]:
        """Each text's reward-model tokens (without special tokens) with where each token starts and ends in the
        text; memoised, since decoding asks for the same short windows again and again."""
        if len(self._cache) > MEMO_SIZE:
            self._cache.clear()  # before looking: every text asked for is then in the memo below
        missing = [text for text in dict.fromkeys(texts) if text not in self._cache]
        if missing:
            # The Rust tokenizer directly: what `reward_tokenizer(texts, add_special_tokens=False)` runs, without
            # its Python layer, which would cost more than the tokenization of a short window.
            backend = self.reward_tokenizer.backend_tokenizer
            for text, encoding in zip(
                missing, backend.encode_batch(missing, add_special_tokens=False), strict=True
            ):
                offsets = encoding.offsets
                self._cache[text] = (
                    encoding.ids,
                    [start for start, _ in offsets],
                    [end for _, end in offsets],
                )
        return [self._cache[text] for text in texts]

    def last_word_start(self, text: str) -> int:
        """Where the text's last word starts, with the whitespace before it (which may join it, or the next word):
        the start of the reward tokenizer's last pre-token when it splits words, and of the last whitespace-delimited
        word in any case. Tokens after it may change as the text goes on. A word longer than [`LONG_WORD`]
        characters (text without spaces, such as Chinese) leaves only its last `LONG_WORD // 2` characters open."""
        start = len(text)
        while start and text[start - 1].isspace():
            start -= 1
        while start and not text[start - 1].isspace():
            start -= 1
        while start and text[start - 1].isspace():
            start -= 1
        pre_tokenizer = getattr(self.reward_tokenizer.backend_tokenizer, "pre_tokenizer", None)
        if pre_tokenizer is not None:
            pieces = pre_tokenizer.pre_tokenize_str(text)
            if pieces:
                start = min(start, pieces[-1][1][0])
        if len(text) - start > LONG_WORD:
            start = len(text) - LONG_WORD // 2
        return start

    def prompts_of(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: Sequence[Prompt] | None
    ) -> list[Prompt]:
        """One prompt per row: `prompts` given for the batch (each repeated for the rows `generate()` expanded it
        into), else each row's prompt tokens decoded."""
        rows = len(input_ids)
        if prompts is None:
            return [
                self.prompt_text(ids[mask.bool()].tolist())
                for ids, mask in zip(input_ids, attention_mask, strict=True)
            ]
        if not prompts or rows % len(prompts):
            raise ValueError(
                f"`reward_prompts` has {len(prompts)} prompts for {rows} rows; give one prompt per prompt of the "
                "batch, in order (each is repeated for its `num_return_sequences` or `num_beams` rows)."
            )
        return [prompt for prompt in prompts for _ in range(rows // len(prompts))]


class BridgedText:
    """One row's response, as the language model's token ids, as text, and as the reward model's stable tokens.

    `stable` are reward-model tokens of the start of the text that no continuation is expected to change, checked
    with [`PROBES`]; `stable_ends[i]` is the character where `stable[i]` ends. The rest of the text, the tail, is
    re-tokenised at every step. [`~BridgedText.tokens_after`] gives the reward model's tokens of any text that
    starts with this row's text, after a given number of stable tokens.

    Args:
        bridge ([`TextBridge`]): the tokenizers.
    """

    def __init__(self, bridge: TextBridge):
        self.bridge = bridge
        self.token_ids: list[int] = []
        self.text = ""
        self.stable: list[int] = []
        self.stable_ends: list[int] = []
        self._texts_with: dict[int, str] = {}

    def copy(self) -> BridgedText:
        other = BridgedText(self.bridge)
        other.token_ids, other.text = list(self.token_ids), self.text
        other.stable, other.stable_ends = list(self.stable), list(self.stable_ends)
        other._texts_with = self._texts_with  # never changed in place: `texts_with` and `append` replace it
        return other

    def texts_with(self, token_ids: Sequence[int]) -> list[str]:
        """The response's text with one more language-model token, for each of `token_ids`. The texts are kept
        until the next [`append`], which reuses the one of the token it appends."""
        texts = self.bridge.response_texts([[*self.token_ids, token_id] for token_id in token_ids])
        self._texts_with = dict(zip(token_ids, texts, strict=True))
        return texts

    def depth_for(self, text: str) -> int:
        """How many stable tokens a text keeps: all of them when it starts with their characters, else those that
        end within what the two texts share."""
        end = self.stable_ends[-1] if self.stable_ends else 0
        if text.startswith(self.text[:end]):
            return len(self.stable)
        shared = 0
        while shared < min(len(text), end) and text[shared] == self.text[shared]:
            shared += 1
        return sum(1 for stable_end in self.stable_ends if stable_end <= shared)

    def tokens_after(self, text: str, depth: int) -> tuple[list[int], list[int], list[int]]:
        """The reward model's tokens of `text` after the first `depth` stable tokens, with where each starts and
        ends in `text`.

        `text` must share those tokens' characters. A window starting [`ANCHOR_TOKENS`] stable tokens earlier is
        re-tokenised; if it does not give back its anchor tokens, the window doubles, up to the whole text (which
        is exact by definition).
        """
        anchors = ANCHOR_TOKENS
        while True:
            first = depth - anchors
            if first <= 0:
                ids, starts, ends = self.bridge.encode_spans([text])[0]
                return ids[depth:], starts[depth:], ends[depth:]
            offset = self.stable_ends[first - 1]
            ids, starts, ends = self.bridge.encode_spans([text[offset:]])[0]
            # A tokenizer may read the window's first token differently (a prefix space prepended); the anchors
            # after it have to come back unchanged, each ending where it ended in the whole text.
            if (
                len(ids) >= anchors
                and ids[1:anchors] == self.stable[first + 1 : depth]
                and [offset + end for end in ends[1:anchors]] == self.stable_ends[first + 1 : depth]
            ):
                return (
                    ids[anchors:],
                    [offset + start for start in starts[anchors:]],
                    [offset + end for end in ends[anchors:]],
                )
            anchors *= 2

    def prefetch(self, texts: Sequence[str], depth: int) -> None:
        """Tokenise, in one batch, the windows [`tokens_after`] will first try for `texts` at `depth`."""
        first = depth - ANCHOR_TOKENS
        offset = self.stable_ends[first - 1] if first > 0 else 0
        self.bridge.encode_spans([text[offset:] for text in texts])

    def append(self, token_id: int) -> int:
        """Append a language-model token; returns how many stable tokens remain valid (fewer than before only when
        the decoded text changed before its end, which prefix-consistent decoders never do). New stable tokens are
        added where every probe continuation agrees on them."""
        known = self._texts_with.get(token_id)
        self.token_ids.append(token_id)
        self._texts_with = {}
        text = self.bridge.response_text(self.token_ids) if known is None else known
        depth = self.depth_for(text)
        del self.stable[depth:], self.stable_ends[depth:]
        self.text = text
        self._extend_stable()
        return depth

    def _extend_stable(self) -> None:
        depth = len(self.stable)
        tail, starts, ends = self.tokens_after(self.text, depth)
        # The last word can still be continued, and a cut never splits a character's bytes.
        limit = self.bridge.last_word_start(self.text)
        cuts = [0] + [i for i in range(1, len(tail)) if ends[i - 1] <= min(limit, starts[i])]
        keep = cuts[-1]
        if keep:
            self.prefetch([self.text + probe for probe in PROBES], depth)
        for probe in PROBES:
            if keep == 0:
                return
            probed = self.tokens_after(self.text + probe, depth)[0]
            shared = 0
            while shared < keep and shared < len(probed) and probed[shared] == tail[shared]:
                shared += 1
            keep = max(cut for cut in cuts if cut <= shared)
        self.stable += tail[:keep]
        self.stable_ends += ends[:keep]


def _held_back(text: str) -> str:
    """`text` without the replacement characters of an incomplete last character: at most a character's worth,
    so that bytes that can never form one (invalid UTF-8) become text as they are."""
    held = min(len(text) - len(text.rstrip(REPLACEMENT)), MAX_HELD_BACK)
    return text[: len(text) - held]


def text_bridge(
    language_tokenizer: PreTrainedTokenizerBase | None,
    reward_tokenizer: PreTrainedTokenizerBase | None,
    prompt_template: str | None = None,
) -> TextBridge | None:
    """How a reward model reads the language model's output: `None` when it reads the same token ids (the same
    vocabulary, compared by [`~tokenization.vocabulary_fingerprint`], or no reward tokenizer known), else the
    [`TextBridge`] between the two tokenizers.

    Raises:
        `ValueError`: a reward tokenizer (or a prompt template) without the language model's tokenizer, which the
            comparison needs.
    """
    if reward_tokenizer is None:
        if prompt_template is not None:
            raise ValueError(
                "`reward_prompt_template` formats prompts for a reward model with another tokenizer; pass that "
                "tokenizer as `reward_tokenizer=` too."
            )
        return None
    if language_tokenizer is None:
        raise ValueError(
            "The reward model's tokenizer is known but not the language model's, so it cannot be told whether the "
            "two share a vocabulary: pass the language model's tokenizer (`tokenizer=`)."
        )
    if vocabulary_fingerprint(language_tokenizer) == vocabulary_fingerprint(reward_tokenizer):
        return None
    return TextBridge(language_tokenizer, reward_tokenizer, prompt_template)


__all__ = [
    "ANCHOR_TOKENS",
    "LONG_WORD",
    "MAX_HELD_BACK",
    "PROBES",
    "BridgedText",
    "TextBridge",
    "text_bridge",
]
