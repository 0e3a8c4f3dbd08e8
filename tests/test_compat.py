"""The supported transformers range, the cache's spelling on either side of 5.24, and the lazy package."""

from __future__ import annotations

import configparser
import dataclasses
import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import ARCHITECTURES, tiny_prefix_rm
from transformers import AutoModel

import hf_rgtg
from hf_rgtg import compat
from hf_rgtg.compat import CACHE_NAME, TRANSFORMERS_REQUIREMENT
from hf_rgtg.modeling import PrefixRewardOutput

ROOT = Path(__file__).resolve().parent.parent


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_cache_name_is_the_one_the_installed_backbones_take(arch):
    backbone = AutoModel.from_config(tiny_prefix_rm(arch).config.text_config)
    assert CACHE_NAME in inspect.signature(backbone.forward).parameters
    with torch.no_grad():
        out = backbone(torch.tensor([[5, 6, 7]]), use_cache=True)
        step = backbone(torch.tensor([[8]]), use_cache=True, **compat.cache_kwargs(compat.output_cache(out)))
    assert compat.output_cache(step).get_seq_length() == 4


def test_prefix_reward_output_has_the_installed_field_and_reads_by_both_names(logged_deprecations_allowed):
    assert CACHE_NAME in [field.name for field in dataclasses.fields(PrefixRewardOutput)]
    model = tiny_prefix_rm("llama").eval()
    with torch.no_grad():
        out = model(torch.tensor([[5, 6, 7]]), use_cache=True)
    cache = out[CACHE_NAME]
    assert cache is not None and cache.get_seq_length() == 3
    assert out.cache is cache and out.past_key_values is cache
    # The cache sits among the fields in its place, as it did before the rename.
    assert list(out.keys()) == ["rewards", "reward", CACHE_NAME]


def test_the_old_argument_name_is_still_accepted_by_the_prefix_reward_model():
    model = tiny_prefix_rm("gpt2").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        full = model(ids).rewards
        first = model(ids[:, :3], use_cache=True)
        by_new_name = model(ids[:, 3:], cache=first.cache, use_cache=True).rewards
        first = model(ids[:, :3], use_cache=True)
        by_old_name = model(ids[:, 3:], past_key_values=first.cache, use_cache=True).rewards
    torch.testing.assert_close(by_new_name, full[:, 3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_old_name, full[:, 3:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="Pass the cache once"):
        model(ids[:, 3:], cache=first.cache, past_key_values=first.cache)


def test_future_warnings_fail_the_suite():
    with pytest.raises(FutureWarning):
        warnings.warn("a deprecation", FutureWarning, stacklevel=1)


@pytest.mark.skipif(CACHE_NAME != "cache", reason="transformers before 5.24 has no deprecated cache name")
def test_the_deprecated_cache_spelling_fails_the_suite():
    backbone = AutoModel.from_config(tiny_prefix_rm("llama").config.text_config)
    out = backbone(torch.tensor([[5, 6]]), use_cache=True)
    with pytest.raises(FutureWarning, match="past_key_values"):
        backbone(torch.tensor([[7]]), past_key_values=out["cache"])
    with pytest.raises(FutureWarning, match="deprecated"):
        out.past_key_values  # noqa: B018  (the logged deprecation of the old attribute)


def test_setup_cfg_claims_the_supported_range():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    requirements = setup["options"]["install_requires"].split()
    assert TRANSFORMERS_REQUIREMENT in requirements


_FAKE_VERSION = """
import importlib.metadata as metadata
real = metadata.version
def version(name):
    if name != "transformers":
        return real(name)
    if {value!r} is None:
        raise metadata.PackageNotFoundError(name)
    return {value!r}
metadata.version = version
import hf_rgtg
print("imported")
"""


@pytest.mark.parametrize(
    "installed", ["5.17.2", "5.18.0rc1", "5.18.0.dev0", "4.57.1", "6.0.0", "6.0.0rc1", None]
)
def test_an_unsupported_transformers_is_refused_at_import_with_the_fix(installed):
    result = _run_python(_FAKE_VERSION.format(value=installed))
    assert result.returncode != 0
    assert "ImportError: hf_rgtg" in result.stderr
    assert f'pip install "{TRANSFORMERS_REQUIREMENT}"' in result.stderr
    if installed is not None:
        assert f"transformers {installed} is installed" in result.stderr
        assert f"hf_rgtg supports {TRANSFORMERS_REQUIREMENT}" in result.stderr
    # One message at import, not a traceback from inside the package.
    assert "modeling.py" not in result.stderr and "scoring.py" not in result.stderr


@pytest.mark.parametrize("installed", ["5.18.0", "5.30.0rc1", "5.99.0.dev0"])
def test_a_supported_transformers_imports(installed):
    result = _run_python(_FAKE_VERSION.format(value=installed))
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout


def test_import_and_help_load_neither_torch_nor_transformers():
    result = _run_python(
        "import sys, contextlib, io\n"
        "import hf_rgtg\n"
        "from hf_rgtg.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    code = main(['--help'])\n"
        "assert code == 0 and 'generate' in out.getvalue(), out.getvalue()\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_public_names_load_lazily_from_their_modules():
    for name in hf_rgtg.__all__:
        value = getattr(hf_rgtg, name)
        if name != "__version__":
            assert value is getattr(sys.modules[f"hf_rgtg.{hf_rgtg._EXPORTS[name]}"], name)
    assert set(hf_rgtg.__all__) <= set(dir(hf_rgtg))
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        hf_rgtg.NoSuchThing  # noqa: B018


def test_an_error_inside_a_module_surfaces_unchanged():
    result = _run_python(
        "import sys\n"
        "sys.modules['hf_rgtg.generation'] = None  # an import that fails\n"
        "import hf_rgtg\n"
        "hf_rgtg.RewardGuidance\n"
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr and "hf_rgtg.generation" in result.stderr


def test_import_registers_the_configuration_when_transformers_is_loaded(tmp_path):
    model = tiny_prefix_rm("gpt2")
    model.save_pretrained(tmp_path)
    result = _run_python(
        "import transformers\n"
        "import hf_rgtg\n"
        f"config = transformers.AutoConfig.from_pretrained({str(tmp_path)!r})\n"
        "print(type(config).__name__)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "PrefixRewardConfig"
