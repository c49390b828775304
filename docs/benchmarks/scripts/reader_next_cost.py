"""What one message costs the tensorflow-io reader: ``next()`` on the iterator against the op alone.

A local broker, one partition holding the bench's 320 px pets (~54 KB each), then 4 rounds of
reading 2,800 of them from offset 0 with ``KafkaDataset`` (the reader's settings, its offset
parsed per message as the reader does), once through ``next()`` and once through
``reader._next_element`` (the op ``next()`` runs, without its Python), the order alternating.
Prints the median rate and CPU time per message (the process's, librdkafka's threads included).
Run (2026-12-06, 18:20 and 18:22 UTC, nothing else running)::

    PYTHONPATH=. python docs/benchmarks/scripts/reader_next_cost.py

which printed, in the two runs, ``next()``: 2,155 and 1,315 messages/s, 207 and 241
microseconds of CPU per message (runs 185-278); the op alone: 11,055 and 9,749 messages/s, 57 and
75 microseconds (55-86). Those reads also asked for each message's key, which the reader never
used; without it (20:05 and 20:06 UTC, nothing else running), ``next()``: 7,065 and 6,717
messages/s, 123 and 134 microseconds (112-162); the op alone: 14,330 and 12,701 messages/s, 53
and 54 microseconds (52-68). A third run without it (20:44 UTC): ``next()`` 1,844 messages/s,
186 microseconds (164-197); the op alone 11,377, 64 (55-66): ``next()``'s cost is two-valued
from run to run, the op's is not.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from stream_trainer.config import KafkaConfig
from stream_trainer.ingest import reader
from stream_trainer.kafka import Cluster
from stream_trainer.workbench.bench.timing import round_order
from stream_trainer.workbench.bench.workload import encode_all, make_records, produce_all
from stream_trainer.workbench.broker.local import LocalBroker

MESSAGES, READ, ROUNDS = 3000, 2800, 4


def read(bootstrap: str, topic: str, op_alone: bool) -> tuple[float, float]:
    """Messages/s and CPU microseconds per message of one read of READ messages."""
    import tensorflow_io.kafka as tfio_kafka

    config = reader.tfio_config(KafkaConfig(bootstrap_servers=bootstrap))
    ds = tfio_kafka.KafkaDataset([f"{topic}:0:0:-1"], servers=bootstrap, group="next-cost", eof=False,
                                 timeout=1000, config_global=config, message_offset=True).take(READ)
    cpu, start = time.process_time(), time.monotonic()
    iterator = iter(ds)
    if op_alone:
        next_message = reader._next_element(iterator)
        while True:
            try:
                _value, position = next_message()
            except tf.errors.OutOfRangeError:
                break
            int(position.numpy().rsplit(b":", 1)[1])
    else:
        for _value, position in iterator:
            int(position.numpy().rsplit(b":", 1)[1])
    return READ / (time.monotonic() - start), (time.process_time() - cpu) / READ * 1e6


def main() -> None:
    with LocalBroker(Path(tempfile.mkdtemp())) as broker:
        cluster = Cluster(KafkaConfig(bootstrap_servers=broker.bootstrap))
        records = make_records(MESSAGES, 320, 0)
        workload = produce_all(cluster, records, encode_all(records), 1)
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for r in range(ROUNDS):
            for op_alone in round_order((False, True), r):
                runs[op_alone].append(read(broker.bootstrap, workload.topic, op_alone))
        for op_alone, v in runs.items():
            print("the op alone" if op_alone else "next()", f"{statistics.median(x[0] for x in v):.0f} messages/s,",
                  f"{statistics.median(x[1] for x in v):.0f} microseconds of CPU per message, runs",
                  [round(x[1]) for x in v])
        cluster.close()


if __name__ == "__main__":
    main()
