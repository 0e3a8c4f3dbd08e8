"""The reusable parts of the decoding benchmark (`benchmarks/decode_speed.py`).

- `paths`: the folders the benchmarks read and write, `MIB`, `repo_relative`;
- `measure`: peak RSS (`PeakRss`), the `StepClock` stopping criterion, the load of other processes (`LoadMeter`);
- `configuration`: `Setup`, what a configuration in `benchmarks/configs/` builds, and `Config`, how it is named;
- `methods`: the methods by name, and how each guided path builds its guidance (`GUIDED`, `METHODS`);
- `bench`: one measured run (`Job`, `RunResult`, `Bench`);
- `agreement`: before measuring, each fast path gives its reference's greedy output (`check_agreements`);
- `runner`: planning the jobs of a configuration and running them, with warm-up, rotation and reruns;
- `summary`: medians and spreads per (config, batch, new tokens) (`Cell`, `summarise`);
- `tables`, `targets`, `report`: the markdown tables, the PASS/FAIL lines and the whole results file;
- `environment`: versions, threads, CPU and memory of the machine;
- `profiling`: where the time of one guided run goes.

The benchmarks are run as files, not installed: `python benchmarks/decode_speed.py` puts `benchmarks/` on
`sys.path`, which makes this folder the top-level package `harness`.

Importing it sets ``HF_HUB_OFFLINE=1`` and, unless it is set, ``TOKENIZERS_PARALLELISM=false``, as decode_speed.py
always did; import it before transformers, which reads the first when it is imported.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
