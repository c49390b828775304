"""The status line: what the last ``log_every_s`` seconds looked like, in one log line.

Counters accumulate over one window and start again after each line, so the line and the
prequential gauges it sets describe recent behaviour, not the average since start.
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


class Status:
    """The current window, and the line that closes it every ``every_s`` seconds."""

    def __init__(self, every_s: float, step: int, clock: Callable[[], float]) -> None:
        self.every_s = every_s
        self._clock = clock
        self.window = Window(step, clock())

    def restart(self, step: int) -> None:
        self.window = Window(step, self._clock())

    def line(self, step: int, loss: float, lag: int | None, dead_lettered: int) -> str | None:
        """The status line once the window is ``every_s`` old (a new window starts), else None."""
        now = self._clock()
        w = self.window
        if now - w.t0 < self.every_s:
            return None
        self.window = Window(step, now)
        dt = max(now - w.t0, 1e-9)
        fresh = _part(w.fresh_loss, w.fresh_rows, w.fresh_cm, "fresh")
        replay = _part(w.replay_loss, w.replay_rows, w.replay_cm, "replay")
        return (f"step {step} | {(step - w.step) / dt:.2f} steps/s | {w.images / dt:.1f} fresh img/s | "
                f"{w.replayed / dt:.1f} replayed/s | loss {loss:.4f} | fresh {fresh} | replay {replay} | "
                f"lag {'?' if lag is None else lag} | input wait {100.0 * w.waited / dt:.0f}% | "
                f"dead-lettered {dead_lettered}")


def _part(loss_sum: float, rows: int, cm: Array, name: str) -> str:
    """Set the prequential gauges of one part; return its status-line text."""
    if rows == 0:
        return "-"
    mean_loss = loss_sum / rows
    miou, _ = scores(cm)
    metrics.PREQUENTIAL_LOSS.labels(name).set(mean_loss)
    metrics.PREQUENTIAL_MEAN_IOU.labels(name).set(miou)
    return f"{mean_loss:.3f}/{miou:.2f}"
