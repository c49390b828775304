"""Scenario 4: the checkpoint directory fails during saves, and a checkpoint on disk is truncated.

The tests run as root, where ``chmod`` stops nothing, so the faults are made with mechanisms that
bind root too:

* **unwritable**: the checkpoint directory is reached through a symlink that is atomically
  re-pointed at a regular file, so every path under it fails with ENOTDIR (what an unmounted or
  vanished volume looks like); re-pointing it back is the repair. The checkpoints already written
  stay untouched in the real directory.
* **full**: ``RLIMIT_FSIZE`` lowered on the *running* trainer with ``prlimit(2)`` below the size of
  a checkpoint's data file: writes past it fail with EFBIG exactly as a full disk fails them with
  ENOSPC (CPython ignores SIGXFSZ, so the process is not killed); raising it again is the repair.
  The trainer's output goes through a pipe, which the limit does not affect.
* **tmpfs full** (slow, where ``mount`` is permitted): a real 2 MiB tmpfs filled up with a file,
  genuine ENOSPC; deleting the file is the repair.

While the fault lasts the trainer must count failures (``stream_trainer_checkpoint_failures_total``),
keep training, keep the newest good checkpoint readable, and never let the group's committed
offsets pass what that checkpoint holds; after the repair it must save and commit again.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from faultlib import (
    CHECKPOINT_EVERY,
    Program,
    Rig,
    SavedCheckpoint,
    committed_offsets,
    free_port,
    latest_checkpoint,
    metric,
    read_trained,
    scrape,
)

from stream_trainer.state.checkpoint import read_checkpoint

# Smaller than a checkpoint's data file (~110 KB for the test model), larger than the index file.
FULL_DISK_BYTES = 16 * 1024


def _fully_readable(ckpt: SavedCheckpoint) -> None:
    """Every tensor of the checkpoint reads back: it is restorable, not just listed."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(ckpt.path)
    for key in reader.get_variable_to_shape_map():
        reader.get_tensor(key)


def _start_training(rig: Rig, checkpoint_dir: Path, port: int, **extra: object) -> tuple[Program, Program]:
    settings = rig.settings(trainer__checkpoint__dir=str(checkpoint_dir), trainer__metrics__port=port, **extra)
    config = rig.write_config("settings.yaml", settings)
    producer = rig.producer(config)
    trainer = rig.trainer(config)
    return producer, trainer


def _exercise_save_failures(rig: Rig, port: int, producer: Program, trainer: Program, real_dir: Path,
                            break_it: Callable[[], None], repair: Callable[[], None]) -> None:
    """The shared part: fault during saves, checks while it lasts, repair, checks after."""
    rig.wait_until(lambda: metric(scrape(port), "stream_trainer_checkpoints_total") >= 2, 180,
                   "two checkpoints before the fault", alive=(trainer, producer))
    break_it()
    rig.wait_until(lambda: metric(scrape(port), "stream_trainer_checkpoint_failures_total") >= 2, 60,
                   "the trainer to report failed saves", alive=(trainer, producer))

    good = latest_checkpoint(real_dir)
    assert good is not None
    failures_seen = metric(scrape(port), "stream_trainer_checkpoint_failures_total")
    # The fault lasts a while: training goes on, nothing new is saved or committed past ``good``.
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        rig.require_alive(trainer, producer)
        committed = committed_offsets(rig.bootstrap, rig.group, rig.topic, rig.partitions)
        assert all(committed.get(p, 0) <= good.positions.get(p, 0) for p in range(rig.partitions)), (
            f"the group committed {committed}, past the newest saved checkpoint {good}")
        assert latest_checkpoint(real_dir) == good, "a checkpoint appeared while the directory was broken"
        time.sleep(1)
    _fully_readable(good)
    text = scrape(port)
    assert metric(text, "stream_trainer_global_step") >= good.step + CHECKPOINT_EVERY, (
        "the trainer stopped training while it could not save")
    assert metric(text, "stream_trainer_checkpoint_failures_total") > failures_seen, "the trainer stopped retrying"

    repair()
    rig.wait_until(lambda: (ckpt := latest_checkpoint(real_dir)) is not None and ckpt.step > good.step, 60,
                   "a new checkpoint after the repair", alive=(trainer, producer))
    rig.wait_until(lambda: any(committed_offsets(rig.bootstrap, rig.group, rig.topic, rig.partitions).get(p, 0)
                               > o for p, o in good.positions.items()),
                   60, "committed offsets to move on after the repair", alive=(trainer, producer))
    text = scrape(port)
    after_repair = metric(text, "stream_trainer_checkpoint_failures_total")
    saves = metric(text, "stream_trainer_checkpoints_total")
    rig.wait_until(lambda: metric(scrape(port), "stream_trainer_checkpoints_total") >= saves + 2, 60,
                   "two more checkpoints after the repair", alive=(trainer, producer))
    assert metric(scrape(port), "stream_trainer_checkpoint_failures_total") == after_repair, "saves still fail"
    assert trainer.stop() == 0, f"the trainer did not stop cleanly{rig.logs()}"
    final = latest_checkpoint(real_dir)
    assert final is not None
    _fully_readable(final)
    assert committed_offsets(rig.bootstrap, rig.group, rig.topic, rig.partitions) == final.positions


@pytest.mark.faults
def test_unwritable_checkpoint_directory_keeps_the_last_checkpoint_and_holds_back_commits(rig: Rig) -> None:
    real = rig.tmp / "volume"
    (real / "checkpoints").mkdir(parents=True)
    not_a_dir = rig.tmp / "not-a-directory"
    not_a_dir.write_text("a regular file where the volume should be\n")
    link = rig.tmp / "mnt"
    link.symlink_to(real)

    def point(target: Path) -> None:
        tmp = rig.tmp / "mnt.new"
        tmp.symlink_to(target)
        os.replace(tmp, link)  # atomic: the trainer sees the old or the new target, never none

    port = free_port()
    producer, trainer = _start_training(rig, link / "checkpoints", port)
    _exercise_save_failures(rig, port, producer, trainer, real / "checkpoints",
                            break_it=lambda: point(not_a_dir), repair=lambda: point(real))


@pytest.mark.faults
@pytest.mark.slow
def test_full_disk_during_saves_keeps_the_last_checkpoint_and_holds_back_commits(rig: Rig) -> None:
    port = free_port()
    producer, trainer = _start_training(rig, rig.checkpoint_dir, port)
    unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)

    def fill() -> None:
        resource.prlimit(trainer.pid, resource.RLIMIT_FSIZE, (FULL_DISK_BYTES, unlimited[1]))

    def free() -> None:
        resource.prlimit(trainer.pid, resource.RLIMIT_FSIZE, unlimited)

    _exercise_save_failures(rig, port, producer, trainer, rig.checkpoint_dir, break_it=fill, repair=free)


@contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.faults
@pytest.mark.slow
def test_tmpfs_running_full_during_saves_keeps_the_last_checkpoint_and_holds_back_commits(rig: Rig) -> None:
    volume = rig.tmp / "tmpfs"
    with _tmpfs(volume, "2m"):
        filler = volume / "filler"
        port = free_port()
        producer, trainer = _start_training(rig, volume / "checkpoints", port)

        def fill() -> None:
            chunk = b"\0" * 4096
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc  # the volume is full
            finally:
                os.close(fd)

        try:
            _exercise_save_failures(rig, port, producer, trainer, volume / "checkpoints",
                                    break_it=fill, repair=lambda: filler.unlink())
        finally:
            rig.stop_all()  # nothing may hold the mount when it goes


def _checkpoint_files(directory: Path, ckpt: SavedCheckpoint) -> tuple[Path, Path]:
    prefix = Path(ckpt.path).name
    return directory / f"{prefix}.data-00000-of-00001", directory / f"{prefix}.index"


def _train_until_checkpoints(rig: Rig, run: str, count: int) -> tuple[Program, Program, list[SavedCheckpoint]]:
    import tensorflow as tf

    log = rig.tmp / f"trained-{run}.log"
    config = rig.write_config(f"{run}.yaml", rig.settings(trainer__loop__trained_log=str(log)))
    producer = rig.producer(config, f"producer-{run}")
    trainer = rig.trainer(config, f"trainer-{run}")

    def listed() -> list[str]:
        state = tf.train.get_checkpoint_state(str(rig.checkpoint_dir))
        return list(state.all_model_checkpoint_paths) if state else []

    rig.wait_until(lambda: len(listed()) >= count, 180, f"{count} checkpoints", alive=(trainer, producer))
    trainer.kill()
    saved = []
    for path in listed():
        state = read_checkpoint(path)
        saved.append(SavedCheckpoint(path, state.step, state.offsets))
    return producer, trainer, saved


@pytest.mark.faults
# The data shard in make test; the index file (the same fallback, another file) in make test-faults.
@pytest.mark.parametrize("part", ["data", pytest.param("index", marks=pytest.mark.slow)])
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one_at_start(rig: Rig, part: str) -> None:
    producer, _, saved = _train_until_checkpoints(rig, "first", count=2)
    latest, previous = saved[-1], saved[-2]
    data, index = _checkpoint_files(rig.checkpoint_dir, latest)
    victim = data if part == "data" else index
    os.truncate(victim, victim.stat().st_size // 2)

    log = rig.tmp / "trained-second.log"
    trainer = rig.trainer(rig.write_config("second.yaml", rig.settings(trainer__loop__trained_log=str(log))),
                          "trainer-second")
    # It must resume from ``previous``: steps continue from its step, offsets from its positions.
    rig.wait_until(lambda: all(any(p == q and o == start for q, o, _ in read_trained(log))
                               for p, start in previous.positions.items()),
                   180, f"the restarted trainer to train the previous checkpoint's positions {previous.positions}",
                   alive=(trainer, producer))
    second = read_trained(log)
    assert min(s for _, _, s in second) == previous.step + 1, (
        f"the restart did not continue from step {previous.step} (the truncated one was {latest.step})")
    below = [(p, o) for p, o, _ in second if o < previous.positions[p]]
    assert not below, f"offsets below the restored positions were trained again: {below[:10]}"
    assert trainer.stop() == 0, f"the trainer did not stop cleanly{rig.logs()}"


@pytest.mark.faults
def test_no_readable_checkpoint_is_one_line_error_not_a_silent_fresh_start(rig: Rig) -> None:
    producer, _, saved = _train_until_checkpoints(rig, "first", count=2)
    producer.stop()
    for ckpt in saved:
        data, _ = _checkpoint_files(rig.checkpoint_dir, ckpt)
        os.truncate(data, 10)
    trainer = rig.trainer(rig.write_config("again.yaml", rig.settings()), "trainer-again")
    rc = trainer.proc.wait(120)
    trainer.stop()
    output = "".join(trainer.output)
    errors = [line for line in output.splitlines() if line.startswith("stream-trainer: error: ")]
    assert rc == 2 and len(errors) == 1, f"exit {rc}{rig.logs()}"
    assert "no readable checkpoint" in errors[0] and str(rig.checkpoint_dir) in errors[0], errors[0]
    assert "Traceback" not in output
