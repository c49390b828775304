"""The live input path against the live floor, on a broker of its own, to profile where it spends.

Starts a local broker, produces the bench's 3,000 messages (320 px pets, ~54 KB) into a topic of
P partitions, then runs the bench's own contenders (``workbench/bench/contenders.py``) in turn, each
reading the 3,000 messages once, and prints each run's rate and CPU per image. Run it with the
profiler attached once the topic is ready (the file ``ready`` holds the pid), e.g. (2026-12-06,
16:20 UTC, nothing else on the machine)::

    python live_path_profile.py 4 6 pipeline_live &
    py-spy record --pid "$(cat ready)" --duration 12 --rate 200 --format raw --threads -o raw.txt

Arguments: partitions, rounds, comma-separated contenders (floor_live, pipeline_live,
pipeline_live_confluent), and optionally a read-ahead in KiB that every consumer gets
(``kafka.client.queued.max.messages.kbytes``) instead of the trainer's rule, e.g. (2026-12-06,
evening: both live contenders with 32 MiB per partition)::

    python live_path_profile.py 4 5 floor_live,pipeline_live 32768
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import tempfile
from pathlib import Path

from stream_trainer.config import KafkaConfig, Settings
from stream_trainer.kafka import Cluster
from stream_trainer.workbench.bench import contenders
from stream_trainer.workbench.bench.config import BenchConfig
from stream_trainer.workbench.bench.timing import round_order
from stream_trainer.workbench.bench.workload import encode_all, make_records, produce_all
from stream_trainer.workbench.broker.local import LocalBroker

MESSAGES = 3000


def main() -> None:
    partitions, rounds, which = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    client = {"queued.max.messages.kbytes": sys.argv[4]} if len(sys.argv) > 4 else {}
    runs = {"floor_live": contenders.floor_live, "pipeline_live": contenders.pipeline_live,
            "pipeline_live_confluent": contenders.pipeline_live_confluent}
    with LocalBroker(Path(tempfile.mkdtemp())) as broker:
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap, client=client)
        settings = dataclasses.replace(Settings(), kafka=kafka)
        ctx = contenders.Context(settings, BenchConfig())
        cluster = Cluster(settings.kafka)
        records = make_records(MESSAGES, 320, 0)
        workload = produce_all(cluster, records, encode_all(records), partitions)
        Path("ready").write_text(str(os.getpid()))
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in which}
        for r in range(rounds):
            for k in round_order(which, r):  # as the bench
                rate = runs[k](ctx, workload, MESSAGES).rate(200, 32)
                results[k].append((rate.items_per_s, rate.cpu_s_per_item * 1000))
                print(r, k, f"{rate.items_per_s:.0f} images/s, {rate.cpu_s_per_item * 1000:.3f} CPU ms/image",
                      flush=True)
        for k, v in results.items():
            print(k, f"median {statistics.median(x[0] for x in v):.0f} images/s,",
                  f"{statistics.median(x[1] for x in v):.3f} CPU ms/image")
        for k in [k for k in which if k != "floor_live"] if "floor_live" in which else []:
            ratios = [ours[0] / floor[0] for ours, floor in zip(results[k], results["floor_live"], strict=True)]
            print(f"{k} / floor_live: median {statistics.median(ratios):.3f} of per-round ratios",
                  " ".join(f"{x:.3f}" for x in ratios))
        cluster.close()


if __name__ == "__main__":
    main()
