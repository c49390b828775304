"""``stream-trainer`` whose reader of one partition is disturbed mid-batch (issue 20, item 3).

    python -m tests.faults.disturbed_trainer --events FILE [--partition P] [--after N] -- run --config FILE

A test hook, outside the product. Once the readers of partition ``P`` have handed on ``N``
messages and some of them are still on their way to a training step (staged in the intake, in
the inbox or in the decode pipeline), a thread of this hook, at once and in this order:

1. **re-delivers** through the partition's current reader the last message it handed on (same
   offset, same bytes): what a re-fetch, or a restart from a position snapshot taken before the
   last reads, does;
2. **replaces** that reader the stall watchdog's way (``KafkaSource._replace``, with the
   watchdog's ``resolve`` of where to resume);
3. has the **retired** reader deliver the offset its successor resumes at, with bytes that are
   not an Example: what a retired reader woken up in ``Intake.put`` delivers when the topic was
   recreated under it (its message is of the old log). Accepted, it would be dead-lettered and
   the real message refused as a duplicate: a valid message lost.

Then it writes ``FILE`` (JSON, written once, complete): what it did and what the intake
answered. The test judges the outcome from Kafka, the trained log and the checkpoints alone;
this file only says that the disturbance happened, and where.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Not an Example: a retired reader's message from a log that is no longer the partition's.
STALE = b"a retired reader's message of a log that was replaced"
# The hook gives up (and writes nothing) if the moment never comes: the test then times out.
_WAIT_S = 600.0


def _hook(events: Path, partition: int, after: int) -> None:
    from stream_trainer.ingest import intake, supervisor

    sources: list[Any] = []
    delivered: dict[str, Any] = {}  # the partition's last message a reader put: offset, value, CreateTime
    stage = intake.Intake._stage

    def _stage(self: Any, p: int, reader: object, epoch: int, offset: int, value: Any, created_ms: int) -> bool:
        ok = stage(self, p, reader, epoch, offset, value, created_ms)
        if ok and p == partition and not delivered.get("frozen"):
            delivered.update(offset=offset, value=value, created=created_ms)
        return ok

    start = supervisor.KafkaSource.start

    def _start(self: Any, starts: Any, stops: Any = None) -> Any:
        out = start(self, starts, stops)
        if not sources and stops is None and partition in starts:
            sources.append(self)
            threading.Thread(target=_disturb, args=(self, delivered, events, partition, after),
                             name="test-disturbance", daemon=True).start()
        return out

    intake.Intake._stage = _stage  # type: ignore[method-assign]
    supervisor.KafkaSource.start = _start  # type: ignore[method-assign]


def _disturb(src: Any, delivered: dict[str, Any], events: Path, p: int, after: int) -> None:
    deadline = time.monotonic() + _WAIT_S
    while True:
        if src.stop.is_set() or time.monotonic() > deadline:
            return
        on_the_way = src.intake.staged(p) + src.ledger.in_flight(p)
        if src.ledger.read_position(p) >= after and on_the_way > 0 and "offset" in delivered:
            break
        time.sleep(0.002)
    delivered["frozen"] = True
    reader = src.readers[p]
    epoch = reader.epoch
    read_position = src.ledger.read_position(p)
    staged, in_flight = src.intake.staged(p), src.ledger.in_flight(p)
    # 1. The current reader hands on again a message it already handed on.
    again = src.intake.put(p, reader, epoch, delivered["offset"], delivered["value"], delivered["created"])
    # 2. The watchdog's replacement, from where reading stopped.
    src._replace(reader, "replaced by the test (a duplicate delivery, then a reader replaced mid-batch)")
    resumed_at = src.ledger.read_position(p)
    # 3. The retired reader wakes up with the message its successor starts at.
    late = src.intake.put(p, reader, epoch, resumed_at, STALE, 0)
    record = {"partition": p, "epoch": epoch, "read_position": read_position, "staged": staged,
              "in_flight": in_flight, "duplicate_offset": delivered["offset"], "duplicate_put": again,
              "retired_readers": src.retired, "resumed_at": resumed_at, "retired_put": late,
              "source_failure": None if src.failure is None else str(src.failure)}
    tmp = events.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.rename(events)  # the test sees the file complete or not at all


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--")
    import argparse

    parser = argparse.ArgumentParser(prog="disturbed_trainer")
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--after", type=int, default=20)
    args = parser.parse_args(argv[:split])
    from stream_trainer import cli, tfenv

    tfenv.configure()  # as cli.main does, before the hook imports TensorFlow
    _hook(args.events, args.partition, args.after)
    cli.entry(argv[split + 1:])


if __name__ == "__main__":
    main()
