"""Peak resident memory of the real trainer: ``stream-trainer run`` in a child process.

The benchmark process itself holds every message several times over (the in-memory contenders,
cached batches), so its own peak says little about the daemon. The child runs the unmodified
``run`` command against the benchmark topic for a fixed number of steps and reports its VmHWM
as it exits; evaluation, checkpoints every N steps and the metrics endpoint are off.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from stream_trainer.workbench.bench.timing import BenchError
from stream_trainer.config import Settings

_MARK = "BENCH_VMHWM_KB"
# cli.main returns its exit code instead of exiting, so the child can read its own peak afterwards.
# os._exit, not sys.exit: with a partition drained, interpreter teardown destroys the feeder's
# tf.data iterator, whose parallel interleave waits forever for a tfio reader that ignores
# cancellation, so the process would never exit (reported to the lead; see docs/benchmarks.md).
_LAUNCHER = f"""
import os, sys
from stream_trainer import cli
code = cli.main(sys.argv[1:])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print("{_MARK}", line.split()[1], flush=True)
sys.stderr.flush()
os._exit(code)
"""


def _config(settings: Settings, topic: str, steps: int, workdir: Path) -> dict[str, Any]:
    t = settings.trainer
    return {
        "kafka": {"bootstrap_servers": settings.kafka.bootstrap_servers, "client": dict(settings.kafka.client)},
        "topics": {"train": topic, "eval": f"{topic}-no-eval", "dead_letter": f"{topic}-dlq"},
        "trainer": {
            "source": {"group_id": f"bench-rss-{uuid.uuid4().hex[:8]}", "poll_timeout_ms": t.source.poll_timeout_ms},
            "pipeline": dataclasses.asdict(t.pipeline),
            "model": dataclasses.asdict(t.model),
            "loop": {"max_steps": steps, "eval_every_steps": 0, "eval_wait_s": 0.0,
                     "snapshot_dir": str(workdir / "snapshots")},
            "checkpoint": {"dir": str(workdir / "checkpoints"), "export_dir": str(workdir / "export"),
                           "every_steps": 0, "every_seconds": 3600.0},
            "metrics": {"port": 0},
        },
    }


def trainer_peak_rss(settings: Settings, topic: str, steps: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """Run ``stream-trainer run --max-steps steps`` on ``topic``; return its peak RSS (MiB) and wall time."""
    with tempfile.TemporaryDirectory(prefix="stream-trainer-bench-rss-") as tmp:
        workdir = Path(tmp)
        cfg = workdir / "trainer.yaml"
        cfg.write_text(yaml.safe_dump(_config(settings, topic, steps, workdir)))
        cmd = [sys.executable, "-c", _LAUNCHER, "--log-level", "WARNING", "run", "--config", str(cfg)]
        began = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            tail = "\n".join([ln for ln in err.strip().splitlines() if "stream_trainer" in ln or "Error" in ln][-8:])
            msg = (f"'stream-trainer run' for the RSS measurement did not finish {steps} steps in "
                   f"{timeout_s:.0f} s; its last lines:\n{tail}")
            raise BenchError(msg) from exc
        seconds = time.monotonic() - began
    peak = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if proc.returncode != 0 or not peak:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        msg = f"'stream-trainer run' for the RSS measurement failed (exit {proc.returncode}):\n{tail}"
        raise BenchError(msg)
    return {"peak_rss_mib": round(int(peak[0]) / 1024, 1), "steps": steps, "seconds": round(seconds, 1),
            "command": "stream-trainer run --config <generated> (max_steps, eval and metrics off)"}
