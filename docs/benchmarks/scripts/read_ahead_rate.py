"""Does a small read-ahead slow tensorflow-io's reading of one partition taken at a steady pace?

A local broker, one partition holding the bench's 320 px pets (~54 KB each), then rounds of
reading ``READ`` messages from offset 0 with ``KafkaDataset`` (in batches of 10 from tf.data, so
Python's per-message cost stays out) at a paced rate, one read per ``queued.max.messages.kbytes``
value, the values interleaved and their order reversed every other round. Prints each read's
delivered rate and the medians.

Why: librdkafka 1.5.0 stops fetching a partition whose local queue reached that bound (2.x added
``fetch.queue.backoff.ms`` for how long it then waits), and the bench's tensorflow-io contenders
read four partitions at 8 MiB each far slower than at 32. Result (2026-12-06, 17:27 UTC, quiet
machine): one partition alone is not slowed at a decoder's pace: paced at 400 messages/s, 4, 8,
16 and 32 MiB all delivered 393-400; paced at 1,500, 8 and 32 MiB delivered 1,362 and 1,343
(medians of 2), 4 MiB 1,046. So the slow-down needs several partitions read at once beside the
decoder (docs/benchmarks.md, throughput). Run::

    PYTHONPATH=. python docs/benchmarks/scripts/read_ahead_rate.py 3 400 4096,8192,16384,32768

Arguments: rounds, the paced rate in messages/s, comma-separated read-aheads in KiB.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from stream_trainer.config import KafkaConfig, Settings
from stream_trainer.ingest import reader
from stream_trainer.kafka import Cluster
from stream_trainer.workbench.bench.timing import round_order
from stream_trainer.workbench.bench.workload import encode_all, make_records, produce_all
from stream_trainer.workbench.broker.local import LocalBroker

MESSAGES = 3000
READ = 1600  # fewer than were produced: a read never waits on a drained partition
BATCH = 10


def read_rate(bootstrap: str, topic: str, kib: int, target: float) -> float:
    """Messages/s delivered to a consumer that takes at most ``target`` a second (read-ahead ``kib``)."""
    import tensorflow_io.kafka as tfio_kafka

    kafka = KafkaConfig(bootstrap_servers=bootstrap, client={"queued.max.messages.kbytes": str(kib)})
    ds = tfio_kafka.KafkaDataset([f"{topic}:0:0:-1"], servers=bootstrap, group="read-ahead-rate", eof=False,
                                 timeout=1000, config_global=reader.tfio_config(kafka)).take(READ)
    start = time.monotonic()
    for i, _ in enumerate(ds.map(tf.strings.length).batch(BATCH), 1):
        time.sleep(max(0.0, start + i * BATCH / target - time.monotonic()))
    return READ / (time.monotonic() - start)


def main() -> None:
    rounds, target, kibs = int(sys.argv[1]), float(sys.argv[2]), [int(k) for k in sys.argv[3].split(",")]
    with LocalBroker(Path(tempfile.mkdtemp())) as broker:
        settings = dataclasses.replace(Settings(), kafka=KafkaConfig(bootstrap_servers=broker.bootstrap))
        cluster = Cluster(settings.kafka)
        records = make_records(MESSAGES, 320, 0)
        workload = produce_all(cluster, records, encode_all(records), 1)
        rates: dict[int, list[float]] = {k: [] for k in kibs}
        for r in range(rounds):
            for kib in round_order(kibs, r):
                rates[kib].append(read_rate(broker.bootstrap, workload.topic, kib, target))
                print(r, f"read-ahead {kib // 1024} MiB: {rates[kib][-1]:.0f} messages/s (paced at {target:.0f})",
                      flush=True)
        for kib, v in rates.items():
            print(f"read-ahead {kib // 1024} MiB: median {statistics.median(v):.0f} messages/s,",
                  f"min {min(v):.0f}, max {max(v):.0f} (paced at {target:.0f})")
        cluster.close()


if __name__ == "__main__":
    main()
