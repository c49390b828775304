"""What hard kills leave on disk is removed at the next start, and only that (state/leftovers.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

from stream_trainer.state import leftovers
from stream_trainer.state.ownership import DirectoryLock

REPO = Path(__file__).resolve().parents[1]


def _killed_worker_scratch(root: Path, index: int) -> Path:
    """A scratch directory made by a worker process that was then SIGKILLed."""
    code = ("import sys, time; from stream_trainer.state import leftovers; "
            f"print(leftovers.make_scratch({str(root)!r}, {index}), flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    assert path.is_dir()
    assert not DirectoryLock(path).try_acquire(), "the live worker's scratch directory is not locked"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return path


def test_scratch_directories_of_killed_workers_do_not_accumulate(tmp_path: Path) -> None:
    dead = [_killed_worker_scratch(tmp_path, 1) for _ in range(3)]
    live = Path(leftovers.make_scratch(str(tmp_path), 2))  # this process, still running
    (live / "ckpt-5.index").write_bytes(b"live")
    unknown = tmp_path / f"{leftovers.SCRATCH_PREFIX}1-older-version"  # no owner file: nothing proves it stale
    unknown.mkdir()
    mine = Path(leftovers.make_scratch(str(tmp_path), 1))
    try:
        assert not [d for d in dead if d.exists()], "killed workers' scratch directories were kept"
        assert (live / "ckpt-5.index").read_bytes() == b"live", "a live worker's scratch directory was touched"
        assert unknown.is_dir()
        assert mine.name.startswith(f"{leftovers.SCRATCH_PREFIX}1-") and not DirectoryLock(mine).try_acquire()
        # Restarting again and again leaves one directory per live worker, whatever the number of kills.
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unknown.name, mine.name])
    finally:
        leftovers.remove_scratch(str(mine))
        leftovers.remove_scratch(str(live))
    assert not mine.exists() and not live.exists()


def test_temporary_files_of_interrupted_saves_are_removed_and_nothing_else(tmp_path: Path) -> None:
    abandoned = [tmp_path / f"checkpoint.tmp{uuid.uuid4().hex}", tmp_path / f"checkpoint.tmp{uuid.uuid4().hex}"]
    for path in abandoned:
        path.touch()  # a kill during the index file's atomic write leaves it empty
    shards = tmp_path / "ckpt-40_temp"
    shards.mkdir()
    (shards / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 4096)
    kept = ["checkpoint", "ckpt-35.index", "ckpt-35.data-00000-of-00001", ".owner", "checkpoint.tmp-mine",
            "notes_temp"]
    for name in kept:
        (tmp_path / name).write_text("keep")
    assert leftovers.remove_abandoned_writes(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert leftovers.remove_abandoned_writes(tmp_path / "not-there") == 0
