"""Re-reading the replay store's members from Kafka after a restart.

A checkpoint holds the store's members as ``(partition, offset)``, never as pixels; this module
is the ``fetch`` the store's ``restore`` calls: it reads those messages back with one consumer per
partition and decodes them exactly like fresh ones. Members that retention deleted, or that no
longer decode, come back as missing and are counted as lost by the store.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import numpy.typing as npt

from stream_trainer import metrics
from stream_trainer.ingest import pipeline
from stream_trainer.kafka import Cluster

log = logging.getLogger(__name__)
Array = npt.NDArray[Any]

Example = tuple[Array, Array]


def kafka_fetch(cluster: Cluster, topic: str, image_size: int,
                batch_size: int = 64) -> Callable[[Array], Mapping[tuple[int, int], Example | None]]:
    """A ``fetch(members)`` for ``ReplayStore.restore`` that reads ``topic``."""

    def fetch(members: Array) -> dict[tuple[int, int], Example | None]:
        t0 = time.monotonic()
        by_partition: dict[int, list[int]] = defaultdict(list)
        for p, o in members.tolist():
            by_partition[int(p)].append(int(o))
        keys: list[tuple[int, int]] = []
        values: list[bytes] = []
        for p, offsets in sorted(by_partition.items()):
            for o, msg in sorted(cluster.read_offsets(topic, p, offsets).items()):
                keys.append((p, o))
                values.append(msg.value() or b"")
        out: dict[tuple[int, int], Example | None] = {}
        if values:
            for batch in pipeline.decode_values(values, image_size, batch_size):
                for i, image, mask in zip(batch["offset"].numpy().tolist(), batch["image"].numpy(),
                                          batch["mask"].numpy(), strict=True):
                    out[keys[i]] = (image, mask)
        log.info("replay store: re-read %d of %d members from %s in %.1f s", len(out), len(members), topic,
                 time.monotonic() - t0)
        return out

    return fetch


def restore_store(store: object, state: Mapping[str, object], cluster: Cluster, topic: str, image_size: int,
                  partitions: list[int]) -> None:
    """Refill ``store`` with the members of ``partitions`` that ``state`` lists; log and count the outcome."""
    from stream_trainer.learn.replay import ReplayStore

    assert isinstance(store, ReplayStore)
    if not state:
        return
    t0 = time.monotonic()
    try:
        result = store.restore(state, kafka_fetch(cluster, topic, image_size), partitions)
    except ValueError as exc:  # a state from another version or shape: start empty, say so
        log.error("replay store not restored (%s); it refills from the stream", exc)
        return
    metrics.REPLAY_RESTORED.labels("restored").inc(result.restored)
    metrics.REPLAY_RESTORED.labels("lost").inc(result.lost)
    metrics.REPLAY_MEMBERS.set(len(store))
    log.info("replay store restored: %d members, %d lost (deleted or unreadable), in %.1f s", result.restored,
             result.lost, time.monotonic() - t0)
