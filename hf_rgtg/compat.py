"""Every version-dependent spelling of `transformers`, decided once.

The rest of the package never compares versions: it asks this module. Importing it reads the installed version
from the package metadata, without importing `transformers` (so `hf-rgtg --help` stays fast), and refuses a version
outside the supported range with one `ImportError` that names the fix.

What differs across the supported range, and since when:

- **The cache's name** (5.24 renamed it): model forwards take `cache=` instead of `past_key_values=`, outputs carry
  a `cache` field, and `generate()` reads `outputs["cache"]`. The old spelling still works on 5.24 but warns on
  every call, so the package uses [`CACHE_NAME`] through [`cache_kwargs`], [`output_cache`] and [`cache_field`].

The private names of transformers that the package needs are read here too, each behind one function that says
why and in which versions it was checked: [`upload_saved_model`], [`keep_own_weight_names`],
[`generation_special_tokens`], [`model_from_config`] and [`dropped_generate_streamer`]; so is where
`from_pretrained` logs its load report ([`held_load_reports`]).

The oldest supported version is 5.18, the first that honours a configuration's `tie_last_hidden_states`: reward
heads over a truncated backbone (the packaged default reward model among them) read the raw hidden state of
their last kept layer, and 5.16/5.17 silently hand back the final-normalised one instead. See
`docs/development.md` for the reasons behind the range.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from typing import Any, TypeVar

from packaging.version import InvalidVersion, Version

#: The oldest `transformers` release the package supports, and the first release it does not.
MIN_TRANSFORMERS_VERSION = "5.18.0"
MAX_TRANSFORMERS_VERSION = "6.0.0"
TRANSFORMERS_REQUIREMENT = (
    f"transformers>={MIN_TRANSFORMERS_VERSION},<{Version(MAX_TRANSFORMERS_VERSION).major}"
)

#: The first release that spells the cache `cache`.
_CACHE_RENAME_VERSION = Version("5.24.0")


def _release(version: Version) -> Version:
    """`version` without its pre-, post- or development part: a 5.24 release candidate counts as 5.24."""
    return Version(version.base_version)


def installed_transformers_version() -> Version:
    """The installed `transformers` version, read from its metadata, refused with an `ImportError` if it is missing
    or outside the supported range."""
    install = f'pip install "{TRANSFORMERS_REQUIREMENT}"'
    try:
        text = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"hf_rgtg needs transformers, which is not installed. Install it with:\n    {install}"
        ) from None
    try:
        version = Version(text)
    except InvalidVersion:
        raise ImportError(
            f"The installed transformers reports the version {text!r}, which cannot be read. hf_rgtg supports "
            f"{TRANSFORMERS_REQUIREMENT}; reinstall it with:\n    {install}"
        ) from None
    # Pre-releases of the oldest version may lack what it is the oldest for; those of 6.0 count as 6.0.
    if not Version(MIN_TRANSFORMERS_VERSION) <= version or _release(version) >= Version(
        MAX_TRANSFORMERS_VERSION
    ):
        raise ImportError(
            f"hf_rgtg supports {TRANSFORMERS_REQUIREMENT}, but transformers {text} is installed. Install a "
            f"supported version with:\n    {install}"
        )
    return version


TRANSFORMERS_VERSION = installed_transformers_version()

#: The name of the key/value cache in forwards, in model outputs and in `generate()`'s model keyword arguments:
#: `"cache"` from transformers 5.24, `"past_key_values"` before.
CACHE_NAME = "cache" if _release(TRANSFORMERS_VERSION) >= _CACHE_RENAME_VERSION else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """The keyword arguments that hand `cache` to a transformers model's forward, in the installed spelling."""
    return {CACHE_NAME: cache}


def output_cache(outputs: Mapping[str, Any]) -> Any:
    """The cache a transformers `ModelOutput` (or a [`PrefixRewardOutput`]) carries, or `None`, read under the
    installed spelling so that no deprecated alias is touched."""
    return outputs.get(CACHE_NAME)


_Output = TypeVar("_Output", bound=type)


def cache_field(cls: _Output) -> _Output:
    """Give a `ModelOutput` dataclass's `cache` field the installed spelling; apply it *below* `@dataclass`.

    From 5.24 the field stays `cache`, and transformers' `ModelOutput` reads `.past_key_values` as an alias of it.
    Before, transformers builds and reads outputs by `past_key_values`, so the field is renamed to that (keeping its
    place among the fields) and `.cache` becomes a read-only alias: either name reads the cache on every version.
    """
    if CACHE_NAME == "cache":
        return cls
    annotations = cls.__dict__["__annotations__"]
    if "cache" not in annotations:
        raise TypeError(f"{cls.__name__} declares no `cache` field to rename.")
    cls.__annotations__ = {
        (CACHE_NAME if name == "cache" else name): kind for name, kind in annotations.items()
    }
    setattr(cls, CACHE_NAME, cls.__dict__["cache"])
    cls.cache = property(lambda self: getattr(self, CACHE_NAME), doc="The key/value cache (alias).")
    return cls


__all__ = [
    "CACHE_NAME",
    "MAX_TRANSFORMERS_VERSION",
    "MIN_TRANSFORMERS_VERSION",
    "TRANSFORMERS_REQUIREMENT",
    "TRANSFORMERS_VERSION",
    "cache_field",
    "cache_kwargs",
    "installed_transformers_version",
    "output_cache",
]


# transformers' private helpers
#
# Each wraps one private name of transformers that the package cannot do without, says why, and in which versions
# it was read. The callers never touch the private name themselves.


def upload_saved_model(
    model: Any,
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str,
    token: bool | str | None = None,
    create_pr: bool = False,
    revision: str | None = None,
    commit_description: str | None = None,
) -> Any:
    """Upload every file of `folder` (a saved model with its card, and its tokenizer) to the Hub repository
    `repo_id` in one commit, as `PreTrainedModel.push_to_hub` uploads after saving.

    Private because: `push_to_hub` saves the model itself and writes a generic model card over the package's;
    its upload step, `PushToHubMixin._upload_modified_files` (`transformers/utils/hub.py`), is public nowhere. It
    creates the `revision` branch when needed and makes one commit of the folder's files. Read in transformers
    5.18 and 5.24, the ends of the supported range: the same signature and behaviour in both.

    Args:
        model (`PreTrainedModel`): the model that was saved to `folder` (any `PushToHubMixin`).
        folder (`str` or `os.PathLike`): the saved folder; every file in it is uploaded.
        repo_id (`str`): the Hub repository, which has to exist already.
        commit_message (`str`): the commit's message.
        token (`bool` or `str`, *optional*): as for `push_to_hub`.
        create_pr (`bool`, *optional*): as for `push_to_hub`.
        revision (`str`, *optional*): as for `push_to_hub`.
        commit_description (`str`, *optional*): as for `push_to_hub`.

    Returns:
        `huggingface_hub.CommitInfo`: what the Hub answered to the commit.

    Examples:

    ```python
    >>> import tempfile
    >>> from unittest import mock
    >>> from transformers import GPT2Config, GPT2Model
    >>> from hf_rgtg.compat import upload_saved_model

    >>> model = GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16))
    >>> folder = tempfile.mkdtemp()
    >>> model.save_pretrained(folder)
    >>> class Hub:  # stands in for the Hub: it answers with the files of the commit
    ...     def create_commit(self, repo_id, operations, **kwargs):
    ...         return sorted(operation.path_in_repo for operation in operations)
    >>> with mock.patch("transformers.utils.hub.hf_api", Hub):
    ...     upload_saved_model(model, folder, "org/tiny", commit_message="Upload")
    ['config.json', 'model.safetensors']
    ```
    """
    return model._upload_modified_files(
        folder,
        repo_id,
        files_timestamps={},  # no file counts as uploaded already
        commit_message=commit_message,
        token=token,
        create_pr=create_pr,
        revision=revision,
        commit_description=commit_description,
    )


def keep_own_weight_names(model: Any) -> None:
    """Make `model.save_pretrained` write the model's own weight names, not those of the checkpoint it was loaded
    from with a `key_mapping`.

    Private because: `from_pretrained` records the renamings it applied in `model._weight_conversions`, and
    `save_pretrained` reverts them (`revert_weight_conversion`, `transformers/core_model_loading.py`); no public
    setting turns that off. An empty list means that there is nothing to revert (`None` would not: it makes
    transformers fall back to its built-in mappings for the model). Read in transformers 5.18 and 5.24, the ends of
    the supported range: set and read the same way in both.

    Args:
        model (`PreTrainedModel`): a model returned by `from_pretrained`.

    Examples:

    ```python
    >>> from transformers import GPT2Config, GPT2Model
    >>> from hf_rgtg.compat import keep_own_weight_names

    >>> model = GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16))
    >>> keep_own_weight_names(model)
    >>> model._weight_conversions
    []
    ```
    """
    model._weight_conversions = []


def generation_special_tokens(generation_config: Any) -> tuple[Any, Any]:
    """The EOS ids and the pad id that `generate()` settled on, as tensors (or `None`), read inside a
    `custom_generate` callable.

    `generate()` merges the model's generation config, the call's arguments and the model config's ids into the
    private `_eos_token_tensor` and `_pad_token_tensor` of the `GenerationConfig` it hands to the decoding loop; the
    public `eos_token_id`/`pad_token_id` fields may still be unset there. Both privates exist, with these names and
    meanings, in every supported version (5.18 to 5.24, `generation/configuration_utils.py`).
    """
    return generation_config._eos_token_tensor, generation_config._pad_token_tensor


def model_from_config(model_class: Any, config: Any, **kwargs: Any) -> Any:
    """A new model of `model_class` from `config`, as `AutoModel.from_config` builds one.

    `PreTrainedModel._from_config` is the classmethod transformers' own Auto classes call: it applies `dtype` and
    `attn_implementation` from `kwargs` the way loading does, which a plain constructor call does not. It exists
    with this name and signature in 5.18 and 5.24 (`modeling_utils.py`).
    """
    return model_class._from_config(config, **kwargs)


def dropped_generate_streamer() -> Any:
    """The `streamer=` of the `generate()` call that is running a callable `custom_generate`, read from inside that
    callable; `None` if there is none (or no such call).

    Private because: `generate()` hands a callable `custom_generate` only the arguments of its own signature that
    `GenerationMixin._sample` does not take (`_extract_generation_mode_kwargs`, `generation/utils.py`), so the
    streamer, which `_sample` takes, never reaches it, although `generate()` has already handed it the prompt. No
    public way leads to it: this reads the `streamer` local of the innermost frame running
    `GenerationMixin.generate` (its undecorated function, through `inspect.unwrap`, so that a wrapper such as
    [`enable_reward_guided_generate`]'s does not hide it). Read in transformers 5.18 and 5.24, the ends of the
    supported range: the same local, never rebound, and the prompt handed to it before the callable is called in
    both. Should a release hand the streamer over, the callable gets it as its `streamer` argument and does not
    need this.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from transformers.generation.streamers import BaseStreamer
    >>> from hf_rgtg.compat import dropped_generate_streamer

    >>> class Streamer(BaseStreamer):
    ...     def put(self, value): pass
    ...     def end(self): pass
    >>> def decode(model, input_ids, logits_processor, stopping_criteria, generation_config, **kwargs):
    ...     return dropped_generate_streamer() is streamer
    >>> lm = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16))
    >>> streamer = Streamer()
    >>> lm.generate(torch.tensor([[1, 2]]), max_new_tokens=1, streamer=streamer, custom_generate=decode)
    True
    >>> dropped_generate_streamer() is None
    True
    ```
    """
    return _running_generate_local("streamer")


def _running_generate_local(name: str) -> Any:
    """The local `name` of the innermost frame running `GenerationMixin.generate` with a callable
    `custom_generate` (its undecorated function, through `inspect.unwrap`); `None` without one."""
    from transformers.generation.utils import GenerationMixin

    code = inspect.unwrap(GenerationMixin.generate).__code__
    frame = sys._getframe(2)
    try:
        while frame is not None and frame.f_code is not code:
            frame = frame.f_back
        if frame is None or not callable(frame.f_locals.get("custom_generate")):
            return None
        return frame.f_locals.get(name)
    finally:
        del frame  # a frame held from here would keep every local of the call alive


#: Where `from_pretrained` logs its load report (weights missing from the checkpoint, unexpected or of another
#: shape), and what its message says first: `log_state_dict_report` (`transformers/utils/loading_report.py`) logs
#: one warning of `"<model class> LOAD REPORT from: <name>"` and a table on `modeling_utils`' logger, in 5.18 and
#: 5.24 alike.
_LOAD_REPORT_LOGGER = "transformers.modeling_utils"
_LOAD_REPORT_MARK = "LOAD REPORT"


@contextmanager
def held_load_reports() -> Iterator[list[logging.LogRecord]]:
    """Hold back the load reports that `from_pretrained` logs inside the block, for the caller to judge.

    Yields the list the reports are held in; [`release_load_reports`] logs them as they would have been. Other log
    records pass. If the block raises, the reports are logged at once, since they may explain the error.
    """
    logger = logging.getLogger(_LOAD_REPORT_LOGGER)
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if _LOAD_REPORT_MARK in record.getMessage():
            held.append(record)
            return False
        return True

    logger.addFilter(hold)
    try:
        yield held
    except BaseException:
        logger.removeFilter(hold)
        release_load_reports(held)
        raise
    finally:
        logger.removeFilter(hold)


def release_load_reports(reports: list[logging.LogRecord]) -> None:
    """Log the load reports [`held_load_reports`] held back, to the handlers they were logged for."""
    for record in reports:
        logging.getLogger(record.name).handle(record)


__all__ += [
    "dropped_generate_streamer",
    "generation_special_tokens",
    "held_load_reports",
    "keep_own_weight_names",
    "model_from_config",
    "release_load_reports",
    "upload_saved_model",
]
