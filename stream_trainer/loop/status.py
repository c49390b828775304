"""The status line: what the last ``log_every_s`` seconds looked like, in one log line.

Counters accumulate over one window and start again after each line, so the line, the
prequential gauges it sets and the TensorBoard scalars written from the same ``Reading``
describe recent behaviour, not the average since start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from stream_trainer import metrics
from stream_trainer.quality.evaluate import scores

Array = npt.NDArray[Any]


@dataclass
class Window:
    """Counters for one status-line interval."""

    step: int
    t0: float
    images: int = 0
    replayed: int = 0
    waited: float = 0.0
    fresh_loss: float = 0.0
    fresh_rows: int = 0
    replay_loss: float = 0.0
    replay_rows: int = 0
    fresh_cm: Array = field(default_factory=lambda: np.zeros((3, 3), np.int64))
    replay_cm: Array = field(default_factory=lambda: np.zeros((3, 3), np.int64))

    def add(self, out: dict[str, Array], fresh: int, replayed: int) -> None:
        """One step's outputs (the replica step's sums) and its row counts."""
        self.images += fresh
        self.replayed += replayed
        self.fresh_loss += float(out["fresh_loss_sum"])
        self.fresh_rows += int(out["fresh_rows"])
        self.replay_loss += float(out["replay_loss_sum"])
        self.replay_rows += int(out["replay_rows"])
        self.fresh_cm += out["fresh_confusion"]
        self.replay_cm += out["replay_confusion"]


@dataclass(frozen=True)
class Reading:
    """One closed window: the numbers of the status line (and of TensorBoard's scalars)."""

    step: int
    steps_per_s: float
    fresh_per_s: float
    replayed_per_s: float
    loss: float
    fresh: tuple[float, float] | None  # prequential (mean loss, mean IoU) of fresh rows; None: no rows
    replay: tuple[float, float] | None
    lag: int | None
    input_wait: float  # the fraction of the window spent waiting for a batch
    dead_lettered: int

    def line(self) -> str:
        return (f"step {self.step} | {self.steps_per_s:.2f} steps/s | {self.fresh_per_s:.1f} fresh img/s | "
                f"{self.replayed_per_s:.1f} replayed/s | loss {self.loss:.4f} | fresh {_text(self.fresh)} | "
                f"replay {_text(self.replay)} | lag {'?' if self.lag is None else self.lag} | "
                f"input wait {100.0 * self.input_wait:.0f}% | dead-lettered {self.dead_lettered}")


class Status:
    """The current window, and the reading that closes it every ``every_s`` seconds."""

    def __init__(self, every_s: float, step: int, clock: Callable[[], float]) -> None:
        self.every_s = every_s
        self._clock = clock
        self.window = Window(step, clock())

    def restart(self, step: int) -> None:
        self.window = Window(step, self._clock())

    def reading(self, step: int, loss: float, lag: int | None, dead_lettered: int) -> Reading | None:
        """The window's reading once it is ``every_s`` old (a new window starts), else None."""
        now = self._clock()
        w = self.window
        if now - w.t0 < self.every_s:
            return None
        self.window = Window(step, now)
        dt = max(now - w.t0, 1e-9)
        return Reading(step, (step - w.step) / dt, w.images / dt, w.replayed / dt, loss,
                       _part(w.fresh_loss, w.fresh_rows, w.fresh_cm, "fresh"),
                       _part(w.replay_loss, w.replay_rows, w.replay_cm, "replay"),
                       lag, w.waited / dt, dead_lettered)


def _part(loss_sum: float, rows: int, cm: Array, name: str) -> tuple[float, float] | None:
    """Set the prequential gauges of one part; return its (mean loss, mean IoU), None without rows."""
    if rows == 0:
        return None
    mean_loss = loss_sum / rows
    miou, _ = scores(cm)
    metrics.PREQUENTIAL_LOSS.labels(name).set(mean_loss)
    metrics.PREQUENTIAL_MEAN_IOU.labels(name).set(miou)
    return mean_loss, miou


def _text(part: tuple[float, float] | None) -> str:
    return "-" if part is None else f"{part[0]:.3f}/{part[1]:.2f}"
