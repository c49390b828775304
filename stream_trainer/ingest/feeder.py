"""The thread that moves decoded rows from the tf.data pipeline into the fresh-row buffer.

Why a thread: the pipeline blocks inside TensorFlow until messages arrive, and a Python signal
handler cannot run while the main thread sits in that ``next()``. The loop instead works on the
fresh-row buffer with timeouts, so SIGTERM is noticed within a fraction of a second even on an idle
topic; the feeder is a supervised daemon thread and never holds up exit.

Rows leave the pipeline in arrival order, so the feeder links each row to the previous message of
its partition (``prev``); the ledger (``ledger.py``) knows each message's epoch (given by the
source when it started or moved the partition) and drops, before the fresh rows, messages of an
older epoch and duplicates. Offsets going backwards are never taken for a new epoch here.

Messages the decoder dropped as malformed: when a group names every message that entered it
(``seen_partition``/``seen_offset``), each dropped one is reported at once to ``on_dropped(partition,
prev, offset, epoch)`` (dead-lettered as the hole ``(prev, offset]``), so a malformed message that
is the last of its partition does not wait for a later one; otherwise (or without ``on_dropped``)
the next row's ``prev`` spans them and the loop dead-letters that gap.

Freshness: a row's ``produce_ts_ms`` is the record's Kafka CreateTime where the reader knows it
(the confluent-kafka reader, when the producer set it: timestamp type CREATE_TIME), else the
Example's ``produce_ts_ms`` field (docs/wire-format.md). Kafka's clock is the producer client's,
set for every record by every Kafka client, so it needs no cooperation from producers in other
languages; the field remains for tensorflow-io, which cannot read timestamps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import tensorflow as tf

from stream_trainer.ingest.fresh import FreshRows, Rows
from stream_trainer.ingest.ledger import PartitionLedger
from stream_trainer.threads import Threads

log = logging.getLogger(__name__)

Dropped = Callable[[int, int, int, int], None]  # (partition, prev, offset, epoch)


class Feeder:
    """Iterates ``decoded`` (batches of decoded rows) in a supervised thread into ``fresh``."""

    def __init__(self, decoded: tf.data.Dataset, fresh: FreshRows, ledger: PartitionLedger | Mapping[int, int],
                 stop: threading.Event, on_dropped: Dropped | None = None, threads: Threads | None = None) -> None:
        self.fresh = fresh
        self.ledger = ledger if isinstance(ledger, PartitionLedger) else PartitionLedger(ledger)
        self._stop = stop
        self._on_dropped = on_dropped
        self._threads = threads or Threads()
        self.exhausted = threading.Event()  # a bounded read ended (benchmarks, tests)
        self.failure: BaseException | None = None  # the pipeline itself broke: the loop must stop
        self._iterator: Iterator[dict[str, tf.Tensor]] = iter(decoded)

    def start(self) -> Feeder:
        self._threads.start("feeder", self._run)
        return self

    def _run(self) -> None:
        try:
            for group in self._iterator:
                rows = self._rows(group)
                # A group whose every message was malformed has no rows (pipeline.decoded_groups).
                if len(rows) and not self.fresh.put(rows, self._stop):
                    return
            self.exhausted.set()
        except Exception as exc:
            log.debug("the decode pipeline failed", exc_info=True)  # the one-line error comes from Threads
            self.failure = exc
            raise

    def _rows(self, group: dict[str, tf.Tensor]) -> Rows:
        partition = group["partition"].numpy()
        offset = group["offset"].numpy()
        n = offset.shape[0]
        keep: list[int] = []
        prev = np.empty(n, np.int64)
        epoch = np.empty(n, np.int32)
        produced = group["produce_ts_ms"].numpy().copy()
        if self._on_dropped is not None and "seen_partition" in group:
            row_of = {(int(p), int(o)): i for i, (p, o) in enumerate(zip(partition, offset, strict=True))}
            for p, o in zip(group["seen_partition"].numpy().tolist(), group["seen_offset"].numpy().tolist(),
                            strict=True):
                fed = self.ledger.fed(p, o)
                if fed is None:
                    continue  # an older epoch or a duplicate
                i = row_of.get((p, o))
                if i is None:
                    self._on_dropped(p, fed[1], o, fed[0])
                else:
                    keep.append(i)
                    epoch[i], prev[i] = fed
                    produced[i] = self.ledger.created_ms(p) or produced[i]
        else:
            for i, (p, o) in enumerate(zip(partition.tolist(), offset.tolist(), strict=True)):
                fed = self.ledger.fed(p, o)
                if fed is not None:
                    keep.append(i)
                    epoch[i], prev[i] = fed
                    produced[i] = self.ledger.created_ms(p) or produced[i]
        if len(keep) < n:
            log.debug("dropped %d rows of an older epoch or read twice", n - len(keep))
        rows = Rows(image=group["image"].numpy(), mask=group["mask"].numpy(), partition=partition, offset=offset,
                    prev=prev, produce_ts_ms=produced, nbytes=group["nbytes"].numpy(),
                    arrived=np.full(n, time.monotonic()), epoch=epoch)
        return rows if len(keep) == n else rows.select(np.asarray(keep, np.intp))
