"""Training throughput: the one-forward all-prefix loss against the enumerated PARGS recipe, and the all-token
(vocab) heads' loss beside the scalar one.

The enumerated recipe turns every pair with responses of length L into L separate preference examples
(`chosen[:t]` vs `rejected[:t]`, t = 1..L) and scores each with its own sequence; the one-forward loss reads all L
prefix rewards of a pair from one forward over the chosen and one over the rejected sequence. Both give the same
loss (checked here); this script times a training step (forward, backward, optimiser) of each on the same tiny model
and data, and writes `benchmarks/results/train_speed.md`. The vocab rows train an all-token head of each form
(`vocab_head="full"`, a V x d map, and `"factorised"`, over the backbone's embedding) on the same backbone shape and
data with the vocab loss: the Bradley-Terry loss on the gathered values plus FaRMA's consistency constraint.

    python benchmarks/train_speed.py [--pairs 32] [--response-length 64] [--steps 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tqdm.auto import tqdm
from transformers import GPT2Config

from hf_rgtg import AutoModelForPrefixReward, PrefixRewardConfig, PrefixRewardModel
from hf_rgtg.training import PrefixRewardCollator, prefix_bradley_terry_loss, vocab_consistency_loss

RESULTS = Path(__file__).parent / "results" / "train_speed.md"
EOS, PAD = 1, 0


def make_pairs(n: int, prompt_length: int, response_length: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def ids(length: int) -> list[int]:
        return torch.randint(2, vocab, (length,), generator=g).tolist()

    return [
        {
            "prompt_ids": ids(prompt_length),
            "chosen_ids": ids(response_length),
            "rejected_ids": ids(response_length),
        }
        for _ in range(n)
    ]


def one_forward_loss(model, batch) -> torch.Tensor:
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    chosen, rejected = model(ids, attention_mask=mask).rewards.chunk(2)
    return prefix_bradley_terry_loss(chosen, rejected, batch["loss_weights"])


def vocab_loss(model, batch, consistency_weight: float = 1.0) -> torch.Tensor:
    """The vocab heads' loss of one forward per response: Bradley-Terry on the values gathered at the real tokens,
    plus the consistency constraint over the whole `(batch, seq, vocab)` output."""
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    output = model(ids, attention_mask=mask, output_next_token_rewards=True)
    weights = batch["loss_weights"]
    chosen, rejected = output.rewards.chunk(2)
    consistency = vocab_consistency_loss(
        output.rewards, output.next_token_rewards, mask, torch.cat([weights, weights])
    )
    return prefix_bradley_terry_loss(chosen, rejected, weights) + consistency_weight * consistency


def enumerated_examples(pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every prefix pair as its own example: right-padded sequences, chosen rows then rejected rows."""
    rows: dict[str, list[list[int]]] = {"chosen": [], "rejected": []}
    for pair in pairs:
        length = max(len(pair["chosen_ids"]), len(pair["rejected_ids"]))
        for name in rows:
            response = pair[f"{name}_ids"] + [EOS] * (length - len(pair[f"{name}_ids"]))
            rows[name] += [pair["prompt_ids"] + response[:t] for t in range(1, length + 1)]
    sequences = rows["chosen"] + rows["rejected"]
    width = max(map(len, sequences))
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    return ids, mask


def enumerated_loss(model, ids: torch.Tensor, mask: torch.Tensor, micro_batch: int) -> torch.Tensor:
    """Mean loss over all prefix examples; micro-batched (with gradient accumulation) to bound memory."""
    half = ids.shape[0] // 2
    total = torch.zeros(())
    for start in range(0, half, micro_batch):
        rows = torch.arange(start, min(start + micro_batch, half))
        both = torch.cat([rows, rows + half])
        rewards = model(ids[both], attention_mask=mask[both]).reward
        chosen, rejected = rewards.chunk(2)
        loss = -F.logsigmoid(chosen - rejected).sum() / half
        if torch.is_grad_enabled():
            loss.backward()
        total = total + loss.detach()
    return total


def time_steps(step, steps: int) -> list[float]:
    step()  # warm-up
    times = []
    for _ in tqdm(range(steps), leave=False):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=16, help="pairs per training step")
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--response-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (median reported)")
    parser.add_argument(
        "--micro-batch", type=int, default=64, help="prefix examples per forward, enumerated recipe"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=8192, n_embd=256, n_layer=4, n_head=4, n_positions=256, bos_token_id=EOS, eos_token_id=EOS
    )
    model = AutoModelForPrefixReward.from_config(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pairs = make_pairs(args.pairs, args.prompt_length, args.response_length, config.vocab_size)
    batch = PrefixRewardCollator(pad_token_id=PAD, eos_token_id=EOS)(pairs)
    ids, mask = enumerated_examples(pairs)

    model.eval()  # no dropout: the two losses must agree exactly
    with torch.no_grad():
        loss_one = one_forward_loss(model, batch).item()
        loss_enum = enumerated_loss(model, ids, mask, args.micro_batch).item()
    model.train()

    def step_one():
        optimizer.zero_grad()
        one_forward_loss(model, batch).backward()
        optimizer.step()

    def step_enum():
        optimizer.zero_grad()
        enumerated_loss(model, ids, mask, args.micro_batch)
        optimizer.step()

    def vocab_step(form: str):
        torch.manual_seed(0)
        vocab_model = PrefixRewardModel(
            PrefixRewardConfig(text_config=config, head_kind="vocab", vocab_head=form)
        )
        vocab_model.train()
        vocab_optimizer = torch.optim.AdamW([p for p in vocab_model.parameters() if p.requires_grad], lr=1e-5)

        def step():
            vocab_optimizer.zero_grad()
            vocab_loss(vocab_model, batch).backward()
            vocab_optimizer.step()

        return step

    one = statistics.median(time_steps(step_one, args.steps))
    enum = statistics.median(time_steps(step_enum, args.steps))
    full = statistics.median(time_steps(vocab_step("full"), args.steps))
    factorised = statistics.median(time_steps(vocab_step("factorised"), args.steps))
    speedup = enum / one
    rows = [
        ("one forward, all prefixes", 2 * args.pairs, one, args.pairs / one),
        ("enumerated recipe", ids.shape[0], enum, args.pairs / enum),
        ("one forward, vocab head (full), BT + consistency", 2 * args.pairs, full, args.pairs / full),
        (
            "one forward, vocab head (factorised), BT + consistency",
            2 * args.pairs,
            factorised,
            args.pairs / factorised,
        ),
    ]
    table = [
        "| method | sequences per step | seconds per step | pairs per second |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {seqs} | {sec:.3f} | {rate:.1f} |" for name, seqs, sec, rate in rows],
    ]
    verdict = "PASS" if speedup >= 5 and abs(loss_one - loss_enum) < 1e-5 else "FAIL"
    lines = [
        "# Training throughput: one-forward all-prefix loss vs the enumerated recipe, and the vocab heads' loss",
        "",
        f"Model: GPT-2 shape, 4 layers, hidden 256, vocabulary 8192, random weights. {args.pairs} pairs per step, "
        f"prompts of {args.prompt_length} tokens, responses of {args.response_length} tokens. AdamW step included; "
        f"median of {args.steps} steps after a warm-up. The enumerated recipe runs {args.micro_batch} prefix examples "
        "per forward with gradient accumulation.",
        "",
        *table,
        "",
        f"Loss on the same weights: one forward {loss_one:.7f}, enumerated {loss_enum:.7f} "
        f"(difference {abs(loss_one - loss_enum):.1e}).",
        "",
        f"Speed-up: **{speedup:.1f}×** (target ≥ 5× with the same loss): {verdict}.",
        "",
        f"The vocab heads' loss costs {full / one:.2f}× (full head) and {factorised / one:.2f}× (factorised) the "
        "scalar one-forward step: the head's output has the vocabulary's width at every position, for the "
        "consistency constraint's maximum.",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}. "
        f"Command: `python benchmarks/train_speed.py --pairs {args.pairs} --response-length {args.response_length} "
        f"--steps {args.steps}`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
