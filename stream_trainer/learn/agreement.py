"""The settings every worker of a job must share, and the check that they do (one collective at start).

Whether a collective runs depends on each worker's own config: a worker with replay gathers the
replay state at every checkpoint, one with another checkpoint or eval interval calls its
collectives at other steps, another model shape all-reduces other gradients. Workers that
disagree deadlock, time out or silently diverge hours later; compared at start, they stop with
one line naming the keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np
import numpy.typing as npt

from stream_trainer.config import Settings
from stream_trainer.errors import ConfigError
from stream_trainer.learn.collectives import names

Array = npt.NDArray[Any]


def collective_settings(settings: Settings) -> dict[str, object]:
    """Every setting that decides which collectives a worker runs, or what they carry."""
    t = settings.trainer
    return {
        "topics.train": settings.topics.train,
        "trainer.source.partitions": list(t.source.partitions),
        "trainer.cluster.workers": list(t.cluster.workers),
        "trainer.cluster.peer_timeout_s": t.cluster.peer_timeout_s,
        "trainer.cluster.learning_rate_scaling": t.cluster.learning_rate_scaling,
        "trainer.model": dataclasses.asdict(t.model),
        "trainer.pipeline.image_size": t.pipeline.image_size,
        "trainer.replay.size_mib": t.replay.size_mib,
        "trainer.replay.policy": t.replay.policy,
        "trainer.checkpoint.every_steps": t.checkpoint.every_steps,
        "trainer.checkpoint.every_seconds": t.checkpoint.every_seconds,
        "trainer.loop.eval_every_steps": t.loop.eval_every_steps,
    }


def _fingerprint(value: object) -> int:
    # 31 bits: the sum of a fingerprint over workers must fit an int64 with room to spare.
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def fingerprints(settings: Settings) -> Array:
    """One fingerprint per key of ``collective_settings``, in its order."""
    return np.array([_fingerprint(v) for v in collective_settings(settings).values()], np.int64)


def check(table: Array, addresses: list[str]) -> None:
    """``table[worker, key]`` holds every worker's fingerprints: raise naming the keys that differ."""
    differ = []
    for j, key in enumerate(collective_settings(Settings())):
        others = [i for i in range(1, table.shape[0]) if table[i, j] != table[0, j]]
        if others:
            differ.append(f"{key} ({names(others, addresses)} differs from the chief's)")
    if differ:
        msg = (f"the workers of this job disagree on settings every worker must share: {'; '.join(differ)}; "
               f"give every worker the same values")
        raise ConfigError(msg)
