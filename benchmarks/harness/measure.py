"""What a run measures besides its wall time: the peak RSS, the time at each checkpoint, the load of others.

Peak RSS is the kernel's high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs`` before each run, or,
where that is not possible, the maximum of a psutil sampling thread. The RSS a run is compared with is read after
``gc.collect()`` and ``malloc_trim(0)``, so that a run counts every heap page it touches.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time

import psutil
import torch
from transformers import StoppingCriteria


def malloc_trim() -> None:
    """Hand the pages of every free heap chunk back to the kernel (glibc only; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _read_status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class PeakRss:
    """Peak resident set size of this process over a window, and the RSS at its start.

    Uses the kernel's high-water mark, reset by writing 5 to /proc/self/clear_refs; falls back to a psutil thread
    sampling every `interval` seconds where that file cannot be written.
    """

    def __init__(self, interval: float = 0.002):
        self.process = psutil.Process()
        self.interval = interval
        self.baseline = 0
        self._max = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.mode = (
            "VmHWM (clear_refs)" if self._can_reset_hwm() else f"psutil sampling every {interval * 1e3:g} ms"
        )

    @staticmethod
    def _can_reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            _read_status_kib("VmHWM")
            return True
        except (OSError, KeyError):
            return False

    def rss(self) -> int:
        return self.process.memory_info().rss

    def start(self) -> None:
        gc.collect()
        malloc_trim()
        self.baseline = self.rss()
        if self.mode.startswith("VmHWM"):
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            return
        self._max = self.baseline
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max = max(self._max, self.rss())

    def peak(self) -> int:
        if self.mode.startswith("VmHWM"):
            return _read_status_kib("VmHWM")
        return max(self._max, self.rss())

    def stop(self) -> int:
        peak = self.peak()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return peak


class StepClock(StoppingCriteria):
    """A stopping criterion that never stops: records the wall time and peak RSS when the n-th new token is in."""

    def __init__(self, prompt_length: int, checkpoints: list[int], rss: PeakRss):
        self.prompt_length = prompt_length
        self.checkpoints = set(checkpoints)
        self.rss = rss
        self.times: dict[int, float] = {}
        self.peaks: dict[int, int] = {}

    def mark(self, new_tokens: int) -> None:
        if new_tokens in self.checkpoints:
            self.times[new_tokens] = time.perf_counter()
            self.peaks[new_tokens] = self.rss.peak()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.mark(input_ids.shape[1] - self.prompt_length)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class LoadMeter:
    """How many cores other processes kept busy during a window: system-wide busy CPU time minus this process's
    own, over the wall time. On a shared machine it tells which runs were disturbed."""

    def __init__(self):
        self.process = psutil.Process()
        self._start = self._now()

    def _now(self) -> tuple[float, float, float]:
        system = psutil.cpu_times()
        busy = sum(system) - system.idle - getattr(system, "iowait", 0.0)
        own = self.process.cpu_times()
        return time.perf_counter(), busy, own.user + own.system

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> float:
        wall, busy, own = self._now()
        wall0, busy0, own0 = self._start
        return max(0.0, ((busy - busy0) - (own - own0)) / max(wall - wall0, 1e-9))

    def wait_quiet(self, limit: float, max_seconds: float) -> float:
        """Sleep in one-second windows until other processes use at most `limit` cores (or time is up)."""
        deadline = time.perf_counter() + max_seconds
        load = float("inf")
        while time.perf_counter() < deadline:
            self.start()
            time.sleep(1.0)
            load = self.stop()
            if load <= limit:
                break
        return load
