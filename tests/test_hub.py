import math
import re

import pytest
import torch
import transformers.utils.hub as transformers_hub
from conftest import VOCAB_SIZE, build_tokenizer, tiny_causal_lm, tiny_prefix_rm
from huggingface_hub import ModelCard
from test_training import separable_pairs
from transformers import GPT2Config

from hf_rgtg import AutoModelForPrefixReward, PrefixRewardConfig, token_rewards
from hf_rgtg.evaluation import PrefixAccuracy
from hf_rgtg.hub import EXAMPLE_PROMPT, EXAMPLE_RESPONSE, NO_HELD_OUT_PAIRS, accuracy_table, model_card
from hf_rgtg.training import PrefixRewardTrainer, PrefixRewardTrainingConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    tokenizer = build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    model = tiny_prefix_rm("qwen2", seed=7)
    model.config.base_model_name_or_path = "org/tiny-qwen2"
    args = PrefixRewardTrainingConfig(
        output_dir=str(folder / "run"),
        max_steps=20,
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        report_to=[],
        save_strategy="no",
        seed=0,
    )
    trainer = PrefixRewardTrainer(
        model,
        args,
        train_dataset=separable_pairs(32),
        eval_dataset=separable_pairs(16, seed=3),
        processing_class=tokenizer,
        dataset_names=["org/separable-pairs"],
    )
    trainer.train()
    accuracy = trainer.evaluate_prefixes()
    trainer.save_model(str(folder / "model"))
    return trainer.model, folder / "model", accuracy


def test_save_writes_weights_tokenizer_and_a_model_card(trained):
    model, folder, accuracy = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (folder / name).is_file(), name
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "hf_rgtg"
    assert {"reward-model", "prefix-reward-model"} <= set(card.data.tags)
    assert card.data.base_model == "org/tiny-qwen2"
    assert card.data.datasets == ["org/separable-pairs"]
    assert card.data.metrics == ["accuracy"]
    assert "generate(**inputs, reward_model=rm" in card.text
    assert "| prefix_sampling | all |" in card.text and "| global_step | 20 |" in card.text
    assert "Preference pairs: 32 for training, 16 held out." in card.text
    assert f"| 0-25% | {accuracy.accuracy['0-25%']:.3f} | {accuracy.counts['0-25%']} |" in card.text
    assert "| full |" in card.text


def test_trained_model_from_the_hub_cache_gives_identical_rewards(trained, hub_cache):
    model, folder, _ = trained
    from conftest import publish_to_hub_cache

    publish_to_hub_cache(folder, "org/trained-prefix-rm")
    loaded = AutoModelForPrefixReward.from_pretrained("org/trained-prefix-rm").eval()
    assert loaded.config.training_summary["datasets"] == ["org/separable-pairs"]
    model.eval()
    ids = torch.randint(1, VOCAB_SIZE, (3, 9))
    torch.testing.assert_close(loaded(ids).rewards, model(ids).rewards, atol=1e-6, rtol=0)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


class FakeHubApi:
    def __init__(self):
        self.files = {}

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_commit(self, repo_id, operations, **kwargs):
        for op in operations:
            with open(op.path_or_fileobj, "rb") as handle:
                self.files[op.path_in_repo] = handle.read()
        return "commit-info"


def test_push_to_hub_uploads_the_model_with_its_card(trained, monkeypatch):
    model, _, _ = trained
    api = FakeHubApi()
    monkeypatch.setattr(transformers_hub, "hf_api", lambda: api)
    assert model.push_to_hub("org/pushed-rm", tags=["sentiment"]) == "commit-info"
    assert {"config.json", "model.safetensors", "README.md"} <= set(api.files)
    card = ModelCard(api.files["README.md"].decode())
    assert card.data.library_name == "hf_rgtg"
    assert "sentiment" in card.data.tags and "prefix-reward-model" in card.data.tags
    assert 'from_pretrained("org/pushed-rm")' in card.text


def test_untrained_model_card_says_so(tmp_path):
    tiny_prefix_rm("gpt2").save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert "no record of its training" in card.text and card.data.library_name == "hf_rgtg"


def test_the_card_and_prefix_accuracy_print_the_same_table(tmp_path):
    accuracy = PrefixAccuracy(
        accuracy={"0-25%": 0.5, "50-75%": 0.75, "full": 1.0},
        counts={"0-25%": 4, "50-75%": 2, "full": 1},
        mean_margin=0.125,
        mean_full_margin=-1.0,
    )
    header = "| prefix of the response | accuracy | prefix pairs |\n| --- | --- | --- |\n"
    assert accuracy.to_markdown() == (
        header
        + "| 0-25% | 0.500 | 4 |\n| 25-50% | nan | 0 |\n| 50-75% | 0.750 | 2 |\n| 75-100% | nan | 0 |\n"
        "| full | 1.000 | 1 |\n\nMean reward margin: 0.1250 over all prefixes, -1.0000 on full responses."
    )
    # The card shows only the buckets it has figures for, and an empty cell for a missing count.
    model = tiny_prefix_rm("gpt2")
    model.config.training_summary = {"prefix_accuracy": accuracy.accuracy, "prefix_counts": {"full": 1}}
    model.save_pretrained(tmp_path)
    table = header + "| 0-25% | 0.500 |  |\n| 50-75% | 0.750 |  |\n| full | 1.000 | 1 |"
    assert accuracy_table(accuracy.accuracy, {"full": 1}) == table
    assert table in ModelCard.load(tmp_path / "README.md").text


def card_snippet(card_text: str) -> str:
    """The Python code of a model card's usage section."""
    return re.search(r"```python\n(.*?)```", card_text, flags=re.DOTALL).group(1)


def run_card_snippet(card_text: str, repo: str, folder) -> dict:
    """Run a card's usage snippet with the saved `folder` in place of the name it loads the model by, as a reader
    who downloaded it would; returns the snippet's variables."""
    code = card_snippet(card_text)
    assert f'from_pretrained("{repo}")' in code
    namespace: dict = {}
    exec(compile(code.replace(f'"{repo}"', repr(str(folder))), "model card", "exec"), namespace)
    return namespace


def test_the_usage_snippet_of_a_trained_card_runs(trained, hub_cache, restore_generate, capsys):
    model, folder, _ = trained
    # The card names its base model by Hub id; the snippet loads that language model for guided decoding.
    hub_cache(tiny_causal_lm("qwen2"), "org/tiny-qwen2", build_tokenizer())
    text = ModelCard.load(folder / "README.md").text
    assert "# model\n" in text  # titled with the folder's name, which the snippet loads
    variables = run_card_snippet(text, "model", folder)
    scored = variables["scored"]
    assert "".join(scored.tokens) == EXAMPLE_RESPONSE and math.isfinite(scored.reward)
    expected = token_rewards(model.eval(), variables["tokenizer"], EXAMPLE_PROMPT, EXAMPLE_RESPONSE)
    assert scored.reward == pytest.approx(expected.reward, abs=1e-5)
    assert (
        variables["out"].shape[0] == 1
        and variables["out"].shape[1] > variables["inputs"]["input_ids"].shape[1]
    )
    assert capsys.readouterr().out  # it prints the reward and the continuation


def test_a_card_names_the_base_model_by_its_hub_id_or_not_at_all(tmp_path):
    local = tmp_path / "lm"
    local.mkdir()
    for base, backbone, expected in (
        (str(local), str(local), None),
        ("org/base-lm", str(local), "org/base-lm"),
        (str(local), "org/backbone-lm", "org/backbone-lm"),
        ("lm-without-org", None, None),
    ):
        config = PrefixRewardConfig(text_config=GPT2Config(n_layer=1), base_model_name_or_path=base)
        config.text_config._name_or_path = backbone or ""
        card = model_card(config, repo_id="org/rm")
        assert card.data.base_model == expected
        assert str(tmp_path) not in str(card)
        # Without the base model's id the snippet only scores, and the text says what guided decoding needs.
        assert ("AutoModelForCausalLM" in card_snippet(card.text)) == (expected is not None)
        assert ("load the language model it was trained on" in card.text) == (expected is None)


def test_the_card_of_an_encoder_guides_no_language_model_with_its_base_model():
    from transformers import BertConfig

    text_config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config = PrefixRewardConfig(text_config=text_config, base_model_name_or_path="org/encoder")
    card = model_card(config, repo_id="org/encoder-rm")
    assert card.data.base_model == "org/encoder"
    assert "AutoModelForCausalLM" not in card_snippet(card.text) and "token_rewards" in card_snippet(
        card.text
    )
    assert "re-encodes the text" in card.text and "scored as a sequence of its own" in card.text


def test_a_saved_card_is_titled_and_loads_by_the_folder_name_or_the_repo_id(tmp_path):
    model = tiny_prefix_rm("gpt2")
    model.save_pretrained(tmp_path / "my-prefix-rm")
    text = ModelCard.load(tmp_path / "my-prefix-rm" / "README.md").text
    assert "# my-prefix-rm\n" in text and 'from_pretrained("my-prefix-rm")' in text
    assert "this prefix reward model" not in text and "<this repo>" not in text
    model.save_pretrained(tmp_path / "elsewhere", repo_id="org/named-rm")
    text = ModelCard.load(tmp_path / "elsewhere" / "README.md").text
    assert "# org/named-rm\n" in text and 'from_pretrained("org/named-rm")' in text


def test_the_card_counts_preference_and_prefix_pairs_and_says_why_it_has_no_accuracy_table():
    config = PrefixRewardConfig(
        text_config=GPT2Config(n_layer=1),
        training_summary={
            "datasets": ["pairs.jsonl"],
            "settings": {"train": "head"},
            "num_pairs": 18,
            "num_eval_pairs": 6,
            "chat_template": True,
            "prefix_accuracy": {"0-25%": 0.5, "full": 1.0},
            "prefix_counts": {"0-25%": 40, "full": 6},
        },
    )
    text = model_card(config, repo_id="org/rm").text
    assert "Preference pairs: 18 for training, 6 held out." in text
    assert "Held-out accuracy of `r(chosen[:t]) > r(rejected[:t])` on 6 preference pairs" in text
    assert "| prefix of the response | accuracy | prefix pairs |" in text and "| 0-25% | 0.500 | 40 |" in text
    assert NO_HELD_OUT_PAIRS not in text
    # The tokenizer had a chat template: the snippet scores chat messages, rendered with it.
    assert 'prompt = [{"role": "user", "content": ' in card_snippet(text)

    del config.training_summary["prefix_accuracy"], config.training_summary["num_eval_pairs"]
    text = model_card(config, repo_id="org/rm").text
    assert "## Prefix accuracy\n\n" + NO_HELD_OUT_PAIRS in text and "| prefix of the response |" not in text
    assert "Preference pairs: 18 for training." in text
