"""``stream-trainer bench``: the trainer measured on a real broker, one scenario per run.

Scenarios, each writing ``<scenario>.json``, ``<scenario>.png`` and ``<scenario>.md`` under
``--out`` and printing the table:

* ``throughput`` (default; issue 16): the input path against the plain-map floors at 1, 4 and
  16 partitions, from memory and live, with CPU seconds per image; training fed live against
  fed from memory; freshness at half load with the default config;
  float32 against mixed bfloat16 (``throughput.py``);
* ``learning`` (``--scenario learning``; issue 14): forgetting on a drifting stream, with and
  without replay (``learning.py``);
* ``memory`` (``--scenario memory``; issue 23): a ``stream-trainer run`` process's RSS and
  threads phase by phase, at several partition counts and with each reader (``memory.py``);
* ``scaleout`` (``--workers 1,2``; issue 12): ``stream-trainer run`` processes training one
  model together, measured from their own /metrics (``scaleout.py``); with
  ``--cores-per-worker K`` (issue 23) each on its own K cores, reported per core.

The broker: ``--bootstrap`` / ``KAFKA_BOOTSTRAP``, else a local Kafka 3.9.1 started for the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from stream_trainer import config as settings_config
from stream_trainer.errors import ConfigError
from stream_trainer.workbench.bench import config as bench_config
from stream_trainer.workbench.broker import KAFKA_VERSION, LocalBroker

log = logging.getLogger(__name__)


class _NoRetraceWarning(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning: every contender run builds
    fresh Kafka readers on purpose (a bounded read per run), each with its own tf.function."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def scenario_of(args: argparse.Namespace) -> str:
    """``scaleout`` when ``--workers`` is given, else ``--scenario`` (``throughput`` by default)."""
    if args.workers:
        return "scaleout"
    return str(args.scenario or "throughput")


def main(args: argparse.Namespace) -> int:
    """Run the scenario the flags ask for; write its outputs; return 0."""
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP")
    overrides = {"bench.messages": args.messages, "bench.repeats": args.repeats, "kafka.bootstrap_servers": bootstrap,
                 **dict(args.settings or [])}
    settings, bench = bench_config.load(args.config, quick=args.quick, overrides=overrides)
    scenario = scenario_of(args)
    placement = _placement(args, scenario)  # before the broker starts: a K that does not fit is refused at once
    logging.getLogger("tensorflow").addFilter(_NoRetraceWarning())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    broker, workdir = None, None
    if not bootstrap:
        workdir = Path(tempfile.mkdtemp(prefix="stream-trainer-bench-kafka-"))
        broker = LocalBroker(workdir)
        settings = settings_config.replace(settings, "kafka.bootstrap_servers", broker.start())
    try:
        command = _command(args, scenario)
        if scenario == "scaleout":
            from stream_trainer.workbench.bench import scaleout

            results = scaleout.run(settings, bench, args.workers, command, placement)
        elif scenario == "learning":
            from stream_trainer.workbench.bench import learning

            results = learning.run(settings, bench, command)
        elif scenario == "memory":
            from stream_trainer.workbench.bench import memory

            results = memory.run(settings, bench, command)
        else:
            from stream_trainer.workbench.bench import throughput

            results = throughput.run(settings, bench, command)
        results["broker"] = {"local": broker is not None,
                             "kafka_version": KAFKA_VERSION if broker is not None else "external"}
        write_outputs(results, out)
    finally:
        if broker is not None:
            broker.stop()
            shutil.rmtree(workdir, ignore_errors=True)  # type: ignore[arg-type]
    return 0


def _placement(args: argparse.Namespace, scenario: str) -> Any:
    """The workers' cores for ``--cores-per-worker`` (None without it); ConfigError where it cannot apply."""
    k = getattr(args, "cores_per_worker", None)
    if k is None:
        return None
    if scenario != "scaleout":
        msg = "--cores-per-worker applies to the scale-out scenario only: add --workers, e.g. --workers 1,2"
        raise ConfigError(msg)
    from stream_trainer.workbench.bench import scaleout_cores

    return scaleout_cores.plan(args.workers, k)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """``<scenario>.json``, ``.png`` and ``.md`` under ``out``; the table is printed too."""
    from stream_trainer.workbench.bench import learning_report, memory_report, report, scaleout_report

    scenario = results["scenario"]
    module: Any = {"throughput": report, "learning": learning_report, "scaleout": scaleout_report,
                   "memory": memory_report}[scenario]
    paths = [out / f"{scenario}.{ext}" for ext in ("json", "png", "md")]
    report.write_json(results, paths[0])
    module.chart(results, paths[1])
    table = module.markdown(results)
    paths[2].write_text(table)
    print(table)
    print(f"wrote {', '.join(str(p) for p in paths)}", flush=True)


def _command(args: argparse.Namespace, scenario: str) -> str:
    parts = ["stream-trainer bench"]
    for flag, value in (("--config", args.config), ("--messages", args.messages), ("--repeats", args.repeats)):
        if value is not None:
            parts.append(f"{flag} {value}")
    if scenario in ("learning", "memory"):
        parts.append(f"--scenario {scenario}")
    if scenario == "scaleout":
        parts.append("--workers " + ",".join(str(n) for n in args.workers))
        if getattr(args, "cores_per_worker", None) is not None:
            parts.append(f"--cores-per-worker {args.cores_per_worker}")
    for key, value in args.settings or []:
        parts.append(f"--set {key}={json.dumps(value) if not isinstance(value, str) else value}")
    if args.quick:
        parts.append("--quick")
    return " ".join(parts)
