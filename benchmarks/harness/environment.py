"""The machine and software a run was measured on, as the results file's Environment table lists them."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import psutil
import torch
import transformers

import hf_rgtg
from harness.measure import PeakRss
from harness.paths import REPO, repo_relative


def environment(args, rss: PeakRss) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "hf_rgtg"], capture_output=True, text=True
        ).stdout.strip()
        commit += " (hf_rgtg/ has uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + shlex.join([repo_relative(Path(sys.argv[0]))] + sys.argv[1:]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_rgtg": f"{hf_rgtg.__version__} (git {commit})",
        "threads": f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op (torch defaults"
        + (")" if args.threads is None else f", overridden by --threads {args.threads})"),
        "cpu": f"{cpu}, {os.cpu_count()} logical cores",
        "memory": f"{psutil.virtual_memory().total / 1024**3:.1f} GiB",
        "rss": rss.mode,
        "configs": {},
        "discarded": [],
    }
