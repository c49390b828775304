"""``pet-producer``: replay pet images into Kafka. Argument parsing and wiring, nothing else.

Progress goes to stderr every ~2 s; the final ``summary sent=N failed=N skipped=N ...`` line goes
to stdout. Errors a person can fix (bad config or input folder, unreachable broker, a taken
metrics port) print one line ``pet-producer: error: ...`` and exit 2, as ``stream-trainer`` and
argparse do. SIGTERM/SIGINT stop producing, flush and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

# The producer only serializes protobufs with TensorFlow; its C++ start-up chatter is noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from producer import app
from stream_trainer import config
from stream_trainer.errors import StreamTrainerError

PROG = "pet-producer"
EXIT_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    env_bootstrap = os.environ.get("PET_PRODUCER_BOOTSTRAP") or os.environ.get("KAFKA_BOOTSTRAP")
    p = argparse.ArgumentParser(prog=PROG, description="Replay labelled pet images into a Kafka topic.")
    p.add_argument("--config", help="YAML settings file (see configs/producer.yaml)")
    p.add_argument("--bootstrap", default=env_bootstrap,
                   help="Kafka bootstrap servers (default: $PET_PRODUCER_BOOTSTRAP, $KAFKA_BOOTSTRAP, "
                        "then kafka.bootstrap_servers from the config)")
    p.add_argument("--rate", type=float, help="messages per second, 0 = as fast as possible")
    p.add_argument("--passes", type=int, help="passes over the source, 0 = forever")
    p.add_argument("--count", type=int, help="synthetic source: images per pass")
    p.add_argument("--source", choices=["synthetic", "dir", "tfds"], help="where images come from")
    p.add_argument("--path", help="dir source: Oxford-IIIT Pet folder; tfds source: data_dir")
    p.add_argument("--topic", help="training topic (topics.train)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port, 0 disables")
    p.add_argument("--limit", type=int, help="stop after this many messages")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only warnings")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "kafka.bootstrap_servers": args.bootstrap,
        "producer.rate": args.rate,
        "producer.passes": args.passes,
        "producer.source.count": args.count,
        "producer.source.kind": args.source,
        "producer.source.path": args.path,
        "topics.train": args.topic,
        "producer.metrics.port": args.metrics_port,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the producer; return the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format=f"{PROG}: %(message)s")
    try:
        settings = config.load(args.config, _overrides(args))
        summary = app.run(settings, handle_signals=True, limit=args.limit)
    except (StreamTrainerError, OSError) as exc:  # OSError: e.g. the metrics port is taken
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(summary.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
