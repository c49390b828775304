"""The eval snapshot PNG: what it shows, and that drawing it for months holds nothing open."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

from stream_trainer.quality.evaluate import GAP_PX, KEEP_SNAPSHOTS, PALETTE, Pictures, write_snapshot

K, SIZE = 4, 24


def _pictures(seed: int) -> Pictures:
    rng = np.random.default_rng(seed)
    return Pictures(rng.integers(0, 256, (K, SIZE, SIZE, 3), dtype=np.uint8),
                    rng.integers(0, 3, (K, SIZE, SIZE), dtype=np.uint8),
                    rng.integers(0, 3, (K, SIZE, SIZE), dtype=np.uint8))


def test_the_snapshot_shows_each_example_as_image_truth_and_prediction_in_a_row(tmp_path: Path) -> None:
    pictures = _pictures(0)
    path = write_snapshot(tmp_path, 120, pictures)
    assert path.name == "eval-step-00000120.png"
    assert (tmp_path / "latest.png").read_bytes() == path.read_bytes()
    grid = tf.io.decode_png(path.read_bytes()).numpy()
    assert grid.shape == (K * SIZE + (K - 1) * GAP_PX, 3 * SIZE + 2 * GAP_PX, 3)
    for i in range(K):
        row = grid[i * (SIZE + GAP_PX):i * (SIZE + GAP_PX) + SIZE]
        columns = [row[:, c * (SIZE + GAP_PX):c * (SIZE + GAP_PX) + SIZE] for c in range(3)]
        assert np.array_equal(columns[0], pictures.image[i])
        assert np.array_equal(columns[1], PALETTE[pictures.truth[i]])
        assert np.array_equal(columns[2], PALETTE[pictures.predicted[i]])


def test_snapshots_drawn_in_many_threads_hold_no_file_open_and_only_the_newest_stay(tmp_path: Path) -> None:
    """A multi-worker job evaluates in a new thread each time (workers.together): a drawing
    library that caches per thread (matplotlib's fonts) would keep files open, evaluation by
    evaluation."""
    write_snapshot(tmp_path, 0, _pictures(0))  # whatever loads once loads here
    before = len(os.listdir("/proc/self/fd"))
    for step in range(1, 41):
        t = threading.Thread(target=write_snapshot, args=(tmp_path, step, _pictures(step)))
        t.start()
        t.join()
    assert len(os.listdir("/proc/self/fd")) <= before
    kept = sorted(p.name for p in tmp_path.glob("eval-step-*.png"))
    assert kept == [f"eval-step-{s:08d}.png" for s in range(41 - KEEP_SNAPSHOTS, 41)]
