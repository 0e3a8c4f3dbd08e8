"""One measured run: a method at a batch size, generating a number of tokens, timed at checkpoints."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, StoppingCriteriaList

from harness.configuration import Setup
from harness.measure import LoadMeter, PeakRss, StepClock
from harness.methods import GUIDED, LOOPS, METHODS
from harness.paths import MIB
from hf_rgtg import CachedScorer, RewardGuidance
from hf_rgtg.scoring import VocabScorer


@dataclass
class Job:
    """One method at one batch size, generating `new_tokens` tokens and reporting at `checkpoints`."""

    method: str
    batch: int
    new_tokens: int
    checkpoints: list[int]
    runs: int


@dataclass
class RunResult:
    config: str
    method: str
    batch: int
    run: int
    baseline_rss: int
    foreign_load: float  # cores kept busy by other processes during the run
    seconds: dict[int, float]
    peak_rss: dict[int, int]


class Bench:
    """The models of one `Setup` and the guidance of every guided path it can run, ready to run a `Job`.

    `methods` are the methods the setup has what they need for, in the order of `METHODS`.
    """

    def __init__(self, setup: Setup, top_k: int, beta: float, rss: PeakRss):
        self.setup = setup
        self.load = LoadMeter()
        self.top_k = top_k
        self.rss = rss
        settings = {
            "beta": beta,
            "top_k": top_k,
            "eos_token_id": setup.eos_token_id,
            "pad_token_id": setup.pad_token_id,
        }
        built = {name: path.build(setup, settings) for name, path in GUIDED.items()}
        self.guidance = {name: guidance for name, guidance in built.items() if guidance is not None}
        self.methods = tuple(
            m
            for m in METHODS
            if m in self.guidance
            or (m in LOOPS and (not LOOPS[m] or LOOPS[m] in setup.reward_models))
            or m == "plain"
        )
        reads_text = any(_reads_text(guidance) for guidance in self.guidance.values())
        self.prompt_texts = setup.prompt_texts if reads_text else []
        self.scorer_types = {
            name: " + ".join(type(scorer).__name__ for scorer in g.scorers)
            for name, g in self.guidance.items()
        }
        setup.lm.generation_config = GenerationConfig(
            do_sample=False, eos_token_id=setup.eos_token_id, pad_token_id=setup.pad_token_id
        )

    def run(self, job: Job, run: int) -> RunResult:
        clock = StepClock(self.setup.prompts.shape[1], job.checkpoints, self.rss)
        self.load.start()
        if job.method in LOOPS:
            seconds_end = self._rm_loop(job, clock)
        else:
            seconds_end = self._generate(job, clock)
        final_peak = self.rss.stop()
        foreign_load = self.load.stop()
        start, end = seconds_end
        clock.times[job.new_tokens] = end
        clock.peaks[job.new_tokens] = final_peak
        return RunResult(
            config=self.setup.key,
            method=job.method,
            batch=job.batch,
            run=run,
            baseline_rss=self.rss.baseline,
            foreign_load=foreign_load,
            seconds={n: clock.times[n] - start for n in job.checkpoints},
            peak_rss={n: clock.peaks[n] for n in job.checkpoints},
        )

    def _generate(self, job: Job, clock: StepClock) -> tuple[float, float]:
        ids, mask = self.setup.prompt(job.batch)
        kwargs = self._guided_kwargs(job.method, mask)
        kwargs["stopping_criteria"].append(clock)
        self.rss.start()
        with torch.no_grad():
            start = time.perf_counter()
            out = self._lm_generate(ids, mask, job.new_tokens, kwargs)
            end = time.perf_counter()
        if out.shape != (job.batch, ids.shape[1] + job.new_tokens):
            raise RuntimeError(
                f"{job.method} generated shape {tuple(out.shape)}, expected {job.new_tokens} tokens."
            )
        guidance = self.guidance.get(job.method)
        if guidance is not None and guidance.tracker.reward_calls != job.new_tokens:
            raise RuntimeError(
                f"{job.method}: {guidance.tracker.reward_calls} reward calls for {job.new_tokens} tokens."
            )
        return start, end

    def greedy(self, method: str, batch: int, new_tokens: int) -> torch.Tensor:
        """The sequences `method` ("plain" or a guided path) generates for the first `batch` prompts, untimed."""
        ids, mask = self.setup.prompt(batch)
        with torch.no_grad():
            return self._lm_generate(ids, mask, new_tokens, self._guided_kwargs(method, mask))

    def _guided_kwargs(self, method: str, mask: torch.Tensor) -> dict:
        """`generate()`'s logits processors and stopping criteria for `method`; a path whose reward model reads
        text is given the prompts as text."""
        guidance = self.guidance.get(method)
        if guidance is None:
            return {"stopping_criteria": StoppingCriteriaList()}
        prompts = self.prompt_texts[: len(mask)] if _reads_text(guidance) else None
        return guidance.generate_kwargs(attention_mask=mask, prompts=prompts)

    def _lm_generate(
        self, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, kwargs: dict
    ) -> torch.Tensor:
        return self.setup.lm.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            **kwargs,
        )

    def _rm_loop(self, job: Job, clock: StepClock) -> tuple[float, float]:
        """One scorer step per new token: score k candidates on the cache, keep one. `rm-loop` drives a
        CachedScorer of `setup.rm` (a k-token forward per step), `vocab-loop` a VocabScorer of the all-token reward
        model (a 1-token forward per step, and k dot products)."""
        ids, mask = self.setup.prompt(job.batch)
        k = self.top_k
        generator = torch.Generator().manual_seed(job.batch * 1000 + job.new_tokens)
        candidates = (
            torch.rand(job.new_tokens, job.batch, self.setup.vocab_size, generator=generator)
            .argsort(-1)[..., :k]
            .contiguous()
            if self.setup.vocab_size * job.new_tokens * job.batch <= 64 * MIB
            else torch.stack(
                [
                    torch.stack(
                        [
                            torch.randperm(self.setup.vocab_size, generator=generator)[:k]
                            for _ in range(job.batch)
                        ]
                    )
                    for _ in range(job.new_tokens)
                ]
            )
        )
        chosen = torch.randint(0, k, (job.new_tokens, job.batch), generator=generator)
        tokens = candidates.gather(2, chosen[..., None])[..., 0]
        role = LOOPS[job.method]
        scorer = VocabScorer(self.setup.reward_models[role]) if role else CachedScorer(self.setup.rm)
        self.rss.start()
        with torch.no_grad():
            start = time.perf_counter()
            scorer.reset(ids, mask, k)
            for step in range(job.new_tokens):
                if step:
                    scorer.advance(tokens[step - 1], None, chosen[step - 1])
                scorer.score(candidates[step])
                clock.mark(step + 1)
            end = time.perf_counter()
        return start, end


def run_record(r: RunResult) -> dict:
    """A run as it is written to the JSON file."""
    return {
        "config": r.config,
        "method": r.method,
        "batch": r.batch,
        "run": r.run,
        "baseline_rss": r.baseline_rss,
        "foreign_load": round(r.foreign_load, 3),
        "seconds": r.seconds,
        "peak_rss": r.peak_rss,
    }


def _reads_text(guidance: RewardGuidance) -> bool:
    """Whether any of the guidance's reward models reads text (another tokenizer), and so needs the prompts' text."""
    return any(bridge is not None for bridge in guidance.bridges)
