"""The ``bench`` command's flags, defined once for ``stream-trainer bench`` and ``python -m ...bench``.

Kept free of heavy imports: the CLI builds its parser before any command runs.
"""

from __future__ import annotations

import argparse
import os

SCENARIOS = ("throughput", "learning", "memory")


def workers_list(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; argparse reports a ValueError as a usage error."""
    counts = [int(x) for x in text.split(",") if x.strip()]
    if not counts or any(n < 1 for n in counts) or len(set(counts)) != len(counts):
        msg = f"--workers takes distinct worker counts >= 1 separated by commas, e.g. 1,2 (got {text!r})"
        raise argparse.ArgumentTypeError(msg)
    return counts


def cores_count(text: str) -> int:
    """``"2"`` -> 2; whether it fits the host is checked against ``--workers`` before anything starts."""
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        msg = f"--cores-per-worker takes a number of cores >= 1, e.g. 2 (got {text!r})"
        raise argparse.ArgumentTypeError(msg)
    return k


def setting(text: str) -> tuple[str, object]:
    """``"trainer.replay.fraction=0.5"`` -> ``("trainer.replay.fraction", 0.5)``; the value is read as YAML."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        msg = f"--set takes KEY=VALUE with a dotted config key, e.g. trainer.replay.fraction=0.5 (got {text!r})"
        raise argparse.ArgumentTypeError(msg)
    return key.strip(), yaml.safe_load(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench flags; ``--workers`` selects the scale-out scenario whatever ``--scenario`` says."""
    parser.add_argument("--config", default=None, help="settings file with a bench: section (configs/bench.yaml)")
    parser.add_argument("--bootstrap", default=os.environ.get("STREAM_TRAINER_BOOTSTRAP"),
                        help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP, else a local broker for the run)")
    parser.add_argument("--out", default="bench-results", help="folder for results.json / .png / .md")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--scenario", choices=SCENARIOS, default="throughput",
                        help="throughput (issue 16, default), learning (issue 14: forgetting with/without replay) "
                             "or memory (issue 23: a trainer's RSS and threads, phase by phase)")
    parser.add_argument("--workers", type=workers_list, default=None, metavar="N,M",
                        help="scale-out (issue 12): train with each number of worker processes, e.g. 1,2")
    parser.add_argument("--cores-per-worker", type=cores_count, default=None, metavar="K",
                        help="with --workers: pin each worker (the 1-worker baseline too) to its own K cores with "
                             "K TensorFlow threads, and report per-core efficiency, replay on and off, and the "
                             "gradient all-reduce time (issue 23)")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="override one config key after --config and --quick, e.g. trainer.replay.fraction=0.5 "
                             "(repeatable; the report's command line lists them)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the command runs")
