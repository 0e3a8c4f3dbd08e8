"""Tokenizer helpers shared by scoring, training and the command line."""

from __future__ import annotations

import logging

from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give `tokenizer` a pad token if it has none, falling back to its EOS token.

    Batched scoring and training pad sequences; many causal-LM tokenizers (GPT-2, Llama) ship without a pad token.
    Padding positions are always masked out, so reusing EOS is safe. The tokenizer is changed in place and
    returned.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the tokenizer to complete.

    Raises:
        `ValueError`: if the tokenizer has neither a pad token nor an EOS token.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg import ensure_pad_token

    >>> tokenizer = PreTrainedTokenizerFast(
    ...     tokenizer_object=Tokenizer(models.WordLevel({"hi": 0, "</s>": 1}, unk_token="hi")), eos_token="</s>"
    ... )
    >>> ensure_pad_token(tokenizer).pad_token
    '</s>'
    ```
    """
    if tokenizer.pad_token_id is not None:
        return tokenizer
    if tokenizer.eos_token is None:
        raise ValueError(
            f"The tokenizer ({type(tokenizer).__name__}) has neither a pad token nor an EOS token, so batches "
            "cannot be padded. Set one before use, e.g. `tokenizer.add_special_tokens({'pad_token': '<pad>'})` "
            "(and resize the model's embeddings), or `tokenizer.pad_token = <an existing token>`."
        )
    logger.info(f"The tokenizer has no pad token; using its EOS token {tokenizer.eos_token!r} for padding.")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


__all__ = ["ensure_pad_token"]
