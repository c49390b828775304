"""A training batch: the fresh rows that have arrived, filled up with rows from the replay store.

* Fresh rows never wait for traffic that may never come: a batch takes what is there, and once
  the first fresh row is in it waits at most ``max_batch_wait_ms`` (counted from that row's
  arrival) for more. A slow stream gives small fresh parts, a fast one full ones.
* Replay fills the rest of the batch, so a slow stream still trains full batches, and reserves
  ``replay.fraction`` of the batch when fresh rows alone could fill it: old phases of the stream
  keep being rehearsed however fast new data comes (docs/learning.md).
* Replayed rows never move Kafka positions: only fresh rows are accounted (``loop/accountant.py``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from stream_trainer.config import PipelineConfig, ReplayConfig
from stream_trainer.ingest.fresh import FreshRows, Rows


class Replay(Protocol):
    def __len__(self) -> int: ...

    def sample(self, n: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]] | None: ...


@dataclass
class Batch:
    image: npt.NDArray[np.uint8]  # (n, S, S, 3)
    mask: npt.NDArray[np.uint8]  # (n, S, S, 1)
    weight: npt.NDArray[np.float32]  # (n,): 1 for real rows, 0 for placeholders
    fresh: npt.NDArray[np.bool_]  # (n,): True for the fresh rows, which come first
    rows: Rows | None  # where the fresh rows came from
    waited_s: float = 0.0  # how long the batcher waited for the first fresh row

    @property
    def n_fresh(self) -> int:
        return 0 if self.rows is None else len(self.rows)

    @property
    def n_rows(self) -> int:
        return int(np.count_nonzero(self.weight))


class Batcher:
    def __init__(self, fresh: FreshRows, replay: Replay | None, pipeline: PipelineConfig, replay_cfg: ReplayConfig,
                 image_size: int) -> None:
        self.fresh = fresh
        self.replay = replay
        self.batch_size = pipeline.batch_size
        self.max_wait_s = pipeline.max_batch_wait_ms / 1000.0
        self.window = pipeline.shuffle_buffer
        self.rng = np.random.default_rng(pipeline.seed or None)
        self.reserved = math.floor(replay_cfg.fraction * pipeline.batch_size) if replay is not None else 0
        self.image_size = image_size
        self._last: Batch | None = None

    def fresh_capacity(self) -> int:
        """Fresh rows a batch may take: the batch minus the replay reserve (once replay has members)."""
        if self.replay is not None and len(self.replay) > 0:
            return max(1, self.batch_size - self.reserved)
        return self.batch_size

    def next(self, wait_s: float) -> Batch | None:
        """The next batch, or None if no fresh row arrived within ``wait_s``."""
        t0 = time.monotonic()
        if self.fresh.wait(1, t0 + wait_s) == 0:
            return None
        waited = time.monotonic() - t0
        cap = self.fresh_capacity()
        self.fresh.wait(cap, time.monotonic() + self.max_wait_s, overdue_s=self.max_wait_s)
        rows = self.fresh.take(cap, self.rng if self.window else None, self.window, self.max_wait_s)
        if rows is None:  # another taker emptied it (cannot happen with one loop)
            return None
        image, mask = rows.image, rows.mask
        n = len(rows)
        fill = self.batch_size - n
        replayed = self.replay.sample(fill) if fill > 0 and self.replay is not None and len(self.replay) else None
        if replayed is not None:
            image = np.concatenate([image, replayed[0]])
            mask = np.concatenate([mask, replayed[1]])
        total = image.shape[0]
        fresh = np.zeros(total, bool)
        fresh[:n] = True
        batch = Batch(image, mask, np.ones(total, np.float32), fresh, rows, waited)
        self._last = batch
        return batch

    def placeholder(self) -> Batch:
        """Zero-weight rows for a step this worker joins without data (multi-worker jobs).

        Real-looking images (replayed, or the last batch), not zeros: batch normalisation still
        updates this worker's moving statistics from them.
        """
        replayed = self.replay.sample(1) if self.replay is not None and len(self.replay) else None
        if replayed is not None:
            image, mask = replayed
        elif self._last is not None:
            image, mask = self._last.image[:1], self._last.mask[:1]
        else:
            s = self.image_size
            image, mask = np.zeros((1, s, s, 3), np.uint8), np.zeros((1, s, s, 1), np.uint8)
        return Batch(image, mask, np.zeros(image.shape[0], np.float32), np.zeros(image.shape[0], bool), None)
