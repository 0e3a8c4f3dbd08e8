"""Streaming: every way into guided generation streams to transformers' streamers exactly what it returns.

The routes are the three ways in (way 2 with each spelling of its streamer, way 3 globally and for one model) and
the pipeline; the streamers are `TextIteratorStreamer`, read in a thread as a user interface reads it, and
`TextStreamer`, which prints. transformers' text streamers take one row, so every call here has one prompt.
"""

import queue
import threading

import pytest
import torch
from conftest import PAD, models
from transformers import pipeline
from transformers.generation.streamers import BaseStreamer, TextIteratorStreamer, TextStreamer

import hf_rgtg.pipelines  # noqa: F401  (registers the task)
from hf_rgtg import RewardGuidance, enable_reward_guided_generate, reward_guided_generate

PROMPT = "Thank you so much"
SETTINGS = {"beta": 2.0, "top_k": 6}
NEW_TOKENS = 8
#: How the text streamers decode: as the pipeline decodes its `generated_text`.
DECODE = {"skip_special_tokens": True}
#: Seconds a `TextIteratorStreamer`'s reader waits for the next piece: a streamer never ended fails the test then.
WAIT = 30


@pytest.fixture
def lm_rm():
    lm, rm = models("llama")  # its random weights do not just repeat one token here
    lm.generation_config.pad_token_id = PAD
    return lm, rm


def new_tokens(tokenizer, ids, out):
    """The new tokens of `out`'s one row, and their text as the streamers decode it."""
    tokens = out[0, ids.shape[1] :].tolist()
    return tokens, tokenizer.decode(tokens, **DECODE)


def explicit(lm, rm, tokenizer, streamer, **gen):
    """Way 1: `RewardGuidance(...).generate_kwargs()`, and `generate()`'s own `streamer=`."""
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    guidance = RewardGuidance(
        rm, eos_token_id=lm.generation_config.eos_token_id, pad_token_id=PAD, **SETTINGS
    )
    out = lm.generate(ids, max_new_tokens=NEW_TOKENS, streamer=streamer, **gen, **guidance.generate_kwargs())
    return new_tokens(tokenizer, ids, out)


def custom_generate(*names):
    """Way 2, `generate(custom_generate=reward_guided_generate, ...)`, the streamer given under `names`."""

    def run(lm, rm, tokenizer, streamer, **gen):
        ids = tokenizer(PROMPT, return_tensors="pt").input_ids
        out = lm.generate(
            ids,
            max_new_tokens=NEW_TOKENS,
            **dict.fromkeys(names, streamer),
            **gen,
            custom_generate=reward_guided_generate,
            reward_model=rm,
            **SETTINGS,
        )
        return new_tokens(tokenizer, ids, out)

    return run


def opt_in(one_model):
    """Way 3, `generate(reward_model=...)` after the opt-in (global, or for the one model)."""

    def run(lm, rm, tokenizer, streamer, **gen):
        enable_reward_guided_generate(lm if one_model else None)
        ids = tokenizer(PROMPT, return_tensors="pt").input_ids
        out = lm.generate(
            ids, max_new_tokens=NEW_TOKENS, streamer=streamer, **gen, reward_model=rm, **SETTINGS
        )
        return new_tokens(tokenizer, ids, out)

    return run


def guided_pipeline(lm, rm, tokenizer, streamer, **gen):
    """The "reward-guided-text-generation" pipeline; it returns text, not token ids."""
    generator = pipeline(
        "reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm, **SETTINGS
    )
    [record] = generator(PROMPT, max_new_tokens=NEW_TOKENS, return_full_text=False, streamer=streamer, **gen)
    return None, record["generated_text"]


ROUTES = [
    pytest.param(explicit, id="way-1"),
    pytest.param(custom_generate("streamer"), id="way-2-streamer"),
    pytest.param(custom_generate("guided_streamer"), id="way-2-guided_streamer"),
    pytest.param(custom_generate("streamer", "guided_streamer"), id="way-2-both"),
    pytest.param(opt_in(one_model=False), id="way-3"),
    pytest.param(opt_in(one_model=True), id="way-3-one-model"),
    pytest.param(guided_pipeline, id="pipeline"),
]
DECODING = pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampling"])


def read_in_a_thread(streamer):
    """Start reading `streamer` in a thread; returns a function that waits for the whole text, and fails if the
    reader waited `WAIT` seconds for a piece that never came (a streamer never ended)."""
    outcome = {}

    def read():
        try:
            outcome["text"] = "".join(streamer)
        except queue.Empty:
            outcome["hung"] = True

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def text():
        reader.join(2 * WAIT)
        assert "text" in outcome, "the streamer was never ended: its reader waited in vain"
        return outcome["text"]

    return text


@DECODING
@pytest.mark.parametrize("route", ROUTES)
def test_a_text_iterator_streamer_read_in_a_thread_gives_the_returned_text(
    route, do_sample, lm_rm, tokenizer, restore_generate
):
    lm, rm = lm_rm
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=WAIT, **DECODE)
    streamed = read_in_a_thread(streamer)
    torch.manual_seed(0)
    _, returned = route(lm, rm, tokenizer, streamer, do_sample=do_sample)
    assert returned
    assert streamed() == returned


@DECODING
@pytest.mark.parametrize("route", ROUTES)
def test_a_text_streamer_prints_the_returned_text(
    route, do_sample, lm_rm, tokenizer, capsys, restore_generate
):
    lm, rm = lm_rm
    streamer = TextStreamer(tokenizer, skip_prompt=True, **DECODE)
    torch.manual_seed(0)
    _, returned = route(lm, rm, tokenizer, streamer, do_sample=do_sample)
    assert returned
    assert capsys.readouterr().out == returned + "\n"  # the streamer ends its text with a newline


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.flatten().tolist())

    def end(self):
        self.ended = True


def test_every_route_streams_the_prompt_then_each_new_token_once(lm_rm, tokenizer, restore_generate):
    lm, rm = lm_rm
    prompt = tokenizer(PROMPT).input_ids
    streamed = {}
    for route in ROUTES:
        [run], way = route.values, route.id
        streamer = RecordingStreamer()
        tokens, returned = run(lm, rm, tokenizer, streamer, do_sample=False)
        assert streamer.ended and streamer.chunks[0] == prompt, way
        assert all(len(chunk) == 1 for chunk in streamer.chunks[1:]), way
        streamed[way] = [token for [token] in streamer.chunks[1:]]
        if tokens is None:  # the pipeline: its text
            assert tokenizer.decode(streamed[way], **DECODE) == returned
        else:
            assert streamed[way] == tokens, way
    assert all(tokens == streamed["way-1"] for tokens in streamed.values())


def beam_search_refusal(lm, tokenizer):
    """What `generate()` says when beam search is given a streamer."""
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with pytest.raises(ValueError) as refused:
        lm.generate(ids, max_new_tokens=2, num_beams=2, do_sample=False, streamer=RecordingStreamer())
    return str(refused.value)


@pytest.mark.parametrize("route", ROUTES)
def test_beam_search_refuses_a_streamer_as_generate_does(route, lm_rm, tokenizer, restore_generate):
    lm, rm = lm_rm
    with pytest.raises(ValueError) as guided:
        route(lm, rm, tokenizer, RecordingStreamer(), num_beams=2, do_sample=False)
    assert str(guided.value) == beam_search_refusal(lm, tokenizer)


@pytest.mark.parametrize(
    "route", [route for route in ROUTES if route.id.startswith(("way-2", "way-3", "pipeline"))]
)
def test_ways_2_and_3_and_the_pipeline_refuse_a_streamer_with_beam_sampling_too(
    route, lm_rm, tokenizer, restore_generate
):
    # `generate()` refuses only beam search: with beam sampling its streamer gets the prompt and is never ended.
    lm, rm = lm_rm
    with pytest.raises(ValueError) as guided:
        route(lm, rm, tokenizer, RecordingStreamer(), num_beams=2, do_sample=True)
    assert str(guided.value) == beam_search_refusal(lm, tokenizer)


def test_way_2_refuses_two_different_streamers(lm_rm, tokenizer):
    lm, rm = lm_rm
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with pytest.raises(ValueError, match="`streamer` and `guided_streamer` are two different streamers"):
        lm.generate(
            ids,
            max_new_tokens=2,
            streamer=RecordingStreamer(),
            guided_streamer=RecordingStreamer(),
            custom_generate=reward_guided_generate,
            reward_model=rm,
        )
