"""Preference data (hf_rgtg/data.py): files and datasets loaded and their bad rows counted, and batches laid out
for the all-prefix loss (`PrefixRewardCollator`)."""

import csv
import json
import logging

import pytest
from conftest import build_tokenizer

import hf_rgtg
import hf_rgtg.training
from hf_rgtg.data import PrefixRewardCollator, load_preference_data

EOS = 0


def test_collator_pads_with_eos_and_selects_prefixes():
    pairs = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12, 13]}]
    batch = PrefixRewardCollator(pad_token_id=99, eos_token_id=EOS)(
        pairs + [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}]
    )
    assert batch["chosen_input_ids"][0].tolist() == [5, 6, 7, 8, 9, EOS, EOS]
    assert batch["rejected_input_ids"][1].tolist() == [1, 3, 99, 99, 99, 99, 99]
    assert batch["chosen_attention_mask"][1].tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert batch["loss_weights"][0].nonzero().flatten().tolist() == [3 - 1 + t for t in range(1, 5)]
    assert batch["loss_weights"][1].nonzero().flatten().tolist() == [1]

    full = PrefixRewardCollator(pad_token_id=99, eos_token_id=EOS, prefix_sampling="full")(pairs)
    assert full["loss_weights"][0].nonzero().flatten().tolist() == [6]
    random_two = PrefixRewardCollator(
        pad_token_id=99, eos_token_id=EOS, prefix_sampling="random", num_random_prefixes=2
    )(pairs)
    assert random_two["loss_weights"][0].count_nonzero() == 2
    assert set(random_two["loss_weights"][0].nonzero().flatten().tolist()) <= {3, 4, 5, 6}
    linear = PrefixRewardCollator(pad_token_id=99, eos_token_id=EOS, position_weighting="linear")(pairs)
    assert linear["loss_weights"][0, 3:7].tolist() == [0.25, 0.5, 0.75, 1.0]


def test_the_per_prefix_collator_needs_no_eos():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "hi": 2}, unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]")
    settings = hf_rgtg.training.PrefixRewardTrainingConfig(output_dir="unused", encoder_prefixes_per_pair=3)
    collator = PrefixRewardCollator.from_config(settings, tokenizer, per_prefix=True)
    assert (collator.pad_token_id, collator.eos_token_id, collator.max_prefixes_per_pair) == (0, None, 3)
    with pytest.raises(ValueError, match="The tokenizer has no EOS token"):
        PrefixRewardCollator.from_config(settings, tokenizer)
    with pytest.raises(ValueError, match="`eos_token_id` is needed .* `per_prefix=True`"):
        PrefixRewardCollator(pad_token_id=0)
    with pytest.raises(ValueError, match="`max_prefixes_per_pair` \\(=0\\)"):
        PrefixRewardCollator(pad_token_id=0, per_prefix=True, max_prefixes_per_pair=0)


def test_the_collator_is_importable_from_where_it_was():
    assert hf_rgtg.PrefixRewardCollator is hf_rgtg.training.PrefixRewardCollator is PrefixRewardCollator
    assert hf_rgtg.training.prefix_lengths is hf_rgtg.data.prefix_lengths


ROWS = [
    {"prompt": "Tell me a story.", "chosen": "What a great day to learn.", "rejected": "This is terrible."},
    {"prompt": "Hello", "chosen": "Thank you so much!", "rejected": "I hate it."},
    {"prompt": "Hi", "chosen": "", "rejected": "sad"},  # empty field
    {"prompt": "Hi", "chosen": "ok"},  # missing column
    {"prompt": "Hi", "chosen": 3, "rejected": "sad"},  # non-string field
    {"prompt": "The weather is cold and grey " * 20, "chosen": "a", "rejected": "b"},  # prompt too long
]


def write(path, rows):
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["prompt", "chosen", "rejected"])
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_files_load_and_bad_rows_are_counted(suffix, tmp_path, caplog):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    rows = (
        ROWS
        if suffix in (".jsonl", ".json")
        else [r for r in ROWS if isinstance(r.get("chosen", ""), str) and "rejected" in r]
    )
    tokenizer = build_tokenizer()
    with caplog.at_level(logging.WARNING, logger="hf_rgtg"):
        data = load_preference_data(write(tmp_path / f"pairs{suffix}", rows), tokenizer, max_length=48)
    assert len(data) == 2
    expected = {"empty field": 1, "prompt longer than max_length": 1}
    if suffix in (".jsonl", ".json"):
        expected.update({"missing column 'rejected'": 1, "non-string field 'chosen' (int)": 1})
    assert dict(data.skipped) == expected
    assert "2 pairs kept; skipped:" in caplog.text
    assert data[0]["prompt_ids"] == tokenizer("Tell me a story.")["input_ids"]


def test_other_file_layouts_load_the_same_pairs(tmp_path):
    tokenizer = build_tokenizer()
    expected = load_preference_data(ROWS[:2], tokenizer).examples
    columns = {key: [row[key] for row in ROWS[:2]] for key in ("prompt", "chosen", "rejected")}
    (tmp_path / "columns.json").write_text(json.dumps(columns))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": ROWS[:2]}))
    write(tmp_path / "bom.csv", ROWS[:2])
    (tmp_path / "bom.csv").write_bytes(
        b"\xef\xbb\xbf" + (tmp_path / "bom.csv").read_bytes()
    )  # a spreadsheet export
    for name in ("columns.json", "wrapped.json", "bom.csv"):
        assert load_preference_data(tmp_path / name, tokenizer).examples == expected, name
    (tmp_path / "one.json").write_text(json.dumps(ROWS[0]))  # a single pair, not its characters
    assert load_preference_data(tmp_path / "one.json", tokenizer).examples == expected[:1]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "broken.jsonl",
            '{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": oops}\n',
            "line 3: not valid JSON",
        ),
        ("broken.json", '[{"prompt": "a"},\n oops]', "line 2: not valid JSON"),
        # Cut short: the error is at the end of its line, not at column 1 of the next.
        (
            "cut.jsonl",
            '{"prompt": "a"}\n{"prompt": "a", "chosen": \n',
            r"line 2: not valid JSON \(Expecting value, column 27\)",
        ),
        ("number.json", "3", "holds a JSON int; expected a list of rows"),
        (
            "ragged.json",
            '{"prompt": ["a", "b"], "chosen": ["c"], "rejected": ["d", "e"]}',
            "different lengths",
        ),
        ("latin1.csv", "prompt,chosen,rejected\ncaf\xe9,b,c\n".encode("latin-1"), "is not UTF-8 text"),
    ],
)
def test_unreadable_files_are_named_with_the_problem(name, content, message, tmp_path):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message) as error:
        load_preference_data(path, build_tokenizer())
    assert name in str(error.value)


def test_a_folder_or_a_dataset_dict_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        load_preference_data(tmp_path, build_tokenizer())
    with pytest.raises(ValueError, match="pass one split"):
        load_preference_data({"train": ROWS, "test": ROWS}, build_tokenizer())


def test_datasets_dataset_and_conversational_rows():
    datasets = pytest.importorskip("datasets")
    tokenizer = build_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|endoftext|>assistant: {% endif %}"
    )
    rows = [
        {
            "prompt": [{"role": "user", "content": "Tell me a story."}],
            "chosen": [{"role": "assistant", "content": "What a great day!"}],
            "rejected": [{"role": "assistant", "content": "This is terrible."}],
        }
    ]
    data = load_preference_data(datasets.Dataset.from_list(rows), tokenizer, max_length=64)
    example = data[0]
    prompt_text = tokenizer.decode(example["prompt_ids"])
    assert prompt_text.endswith("assistant: ") and "user: Tell me a story." in prompt_text
    # The response is what the chat template adds after the prompt: the assistant turn, not the prompt again.
    assert tokenizer.decode(example["chosen_ids"]).strip() == "What a great day!"


def test_nothing_usable_raises():
    with pytest.raises(ValueError, match="No usable preference pair.*missing column"):
        load_preference_data([{"prompt": "a"}], build_tokenizer())
