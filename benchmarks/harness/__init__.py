"""The reusable parts of the decoding benchmark (`benchmarks/decode_speed.py`).

- `paths`: the folders the benchmarks read and write, `MIB`, `repo_relative`;
- `measure`: peak RSS (`PeakRss`), the `StepClock` stopping criterion, the load of other processes (`LoadMeter`);
- `configuration`: `Setup`, what a configuration in `benchmarks/configs/` builds, and `Config`, how it is named.

The benchmarks are run as files, not installed: `python benchmarks/decode_speed.py` puts `benchmarks/` on
`sys.path`, which makes this folder the top-level package `harness`.

Importing it sets ``HF_HUB_OFFLINE=1`` and, unless it is set, ``TOKENIZERS_PARALLELISM=false``, as decode_speed.py
always did; import it before transformers, which reads the first when it is imported.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
