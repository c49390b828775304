"""decode_example of an older commit against today's, in one process, interleaved rounds.

    python docs/benchmarks/scripts/decode_before_after.py 3c02c47 > docs/benchmarks/decode-before-after.json

Two ``make bench`` runs minutes apart on this machine differ by 10-20 % in the plain-map floor,
which decodes with the very same code: a before/after comparison of decoding made from two runs
measures the machine as much as the change. Here both decoders map the same messages, one after
the other in every round, so a drift in the machine lands on both. CPU per image is the process's
user + system time over the images decoded (the map's threads are the only busy ones).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import tensorflow as tf

from stream_trainer.ingest import pipeline as today
from stream_trainer.workbench.bench.workload import encode_all, make_records

MESSAGES, PX, SIZE, BATCH, ROUNDS = 1500, 320, 128, 16, 5


def old_pipeline(commit: str) -> types.ModuleType:
    """``pipeline.py`` as it was at ``commit`` (before the regrouping it lived at the package's top)."""
    for path in ("stream_trainer/pipeline.py", "stream_trainer/ingest/pipeline.py"):
        shown = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True)
        if shown.returncode == 0:
            break
    else:
        sys.exit(f"no pipeline.py at {commit}")
    source = shown.stdout.replace("from stream_trainer.inbox import", "from stream_trainer.ingest.inbox import")
    file = Path(tempfile.mkdtemp()) / "old_pipeline.py"
    file.write_text(source)
    module = types.ModuleType("old_pipeline")
    module.__file__ = str(file)
    exec(compile(source, str(file), "exec"), module.__dict__)  # noqa: S102 - our own file at a commit
    return module


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    commit = sys.argv[1] if len(sys.argv) > 1 else "3c02c47"
    old = old_pipeline(commit)
    values = encode_all(make_records(MESSAGES, PX, seed=7))
    decoders = {commit: lambda v: old.decode_example(v, SIZE), "today": lambda v: today.decode_example(v, SIZE)}
    rounds: dict[str, list[dict[str, float]]] = {k: [] for k in decoders}
    for r in range(ROUNDS):
        for name in (list(decoders) if r % 2 == 0 else reversed(list(decoders))):
            ds = (tf.data.Dataset.from_tensor_slices(values)
                  .map(decoders[name], num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH))
            it = iter(ds)
            next(it)  # traced and warm before the clock starts
            t0, c0, counted = time.perf_counter(), cpu_s(), 0
            for batch in it:
                counted += int(batch["image"].shape[0])
            seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
            rounds[name].append({"images_per_s": counted / seconds, "cpu_ms_per_image": 1000 * cpu / counted})
    summary = {name: {key: statistics.median(r[key] for r in rs) for key in ("images_per_s", "cpu_ms_per_image")}
               for name, rs in rounds.items()}
    json.dump({"command": " ".join(["python", *sys.argv]), "messages": MESSAGES, "message_px": PX,
               "image_size": SIZE, "rounds": rounds, "medians": summary}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
