"""Every version-dependent spelling of `transformers`, decided once.

The rest of the package never compares versions: it asks this module. Importing it reads the installed version
from the package metadata, without importing `transformers` (so `hf-rgtg --help` stays fast), and refuses a version
outside the supported range with one `ImportError` that names the fix.

What differs across the supported range, and since when:

- **The cache's name** (5.24 renamed it): model forwards take `cache=` instead of `past_key_values=`, outputs carry
  a `cache` field, and `generate()` reads `outputs["cache"]`. The old spelling still works on 5.24 but warns on
  every call, so the package uses [`CACHE_NAME`] through [`cache_kwargs`], [`output_cache`] and [`cache_field`].

The oldest supported version is 5.18, the first that honours a configuration's `tie_last_hidden_states`: reward
heads over a truncated backbone (the packaged default reward model among them) read the raw hidden state of
their last kept layer, and 5.16/5.17 silently hand back the final-normalised one instead. See
`docs/development.md` for the reasons behind the range.
"""

from __future__ import annotations

from collections.abc import Mapping
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


# transformers' private helpers


def generation_special_tokens(generation_config: Any) -> tuple[Any, Any]:
    """The EOS ids and the pad id that `generate()` settled on, as tensors (or `None`), read inside a
    `custom_generate` callable.

    `generate()` merges the model's generation config, the call's arguments and the model config's ids into the
    private `_eos_token_tensor` and `_pad_token_tensor` of the `GenerationConfig` it hands to the decoding loop; the
    public `eos_token_id`/`pad_token_id` fields may still be unset there. Both privates exist, with these names and
    meanings, in every supported version (5.18 to 5.24, `generation/configuration_utils.py`).
    """
    return generation_config._eos_token_tensor, generation_config._pad_token_tensor


__all__ = [
    "CACHE_NAME",
    "MAX_TRANSFORMERS_VERSION",
    "MIN_TRANSFORMERS_VERSION",
    "TRANSFORMERS_REQUIREMENT",
    "TRANSFORMERS_VERSION",
    "cache_field",
    "cache_kwargs",
    "generation_special_tokens",
    "installed_transformers_version",
    "output_cache",
]
