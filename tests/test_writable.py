"""Where the trainer writes, checked without creating anything (state/writable.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_trainer.config import load
from stream_trainer.errors import ConfigError
from stream_trainer.state import writable


def test_a_directory_is_usable_when_it_is_one_or_can_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert writable.directory_problem(tmp_path) is None
    assert writable.directory_problem(tmp_path / "a" / "b") is None
    assert writable.directory_problem(blocker) == f"{blocker} is a file, not a directory"
    assert writable.directory_problem(blocker / "a" / "b") == \
        f"cannot create {blocker / 'a' / 'b'}: {blocker} is a file, not a directory"
    assert writable.file_problem(tmp_path) == f"{tmp_path} is a directory, not a file"
    assert writable.file_problem(tmp_path / "new" / "trained.log") is None
    assert not list((tmp_path).glob("a")), "a check created a directory"


def test_only_this_workers_places_are_checked(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    chief = load(None, {"trainer.checkpoint.dir": str(blocker), "trainer.cluster.scratch_dir": str(blocker)})
    with pytest.raises(ConfigError, match=r"^config key 'trainer.checkpoint.dir': .* is a file, not a directory$"):
        writable.check(chief)
    other = load(None, {"trainer.checkpoint.dir": str(blocker), "trainer.cluster.scratch_dir": str(blocker),
                        "trainer.cluster.workers": ["h:1", "h:2"], "trainer.cluster.index": 1})
    with pytest.raises(ConfigError, match=r"^config key 'trainer.cluster.scratch_dir'"):
        writable.check(other)
    no_eval = load(None, {"trainer.loop.snapshot_dir": str(blocker), "trainer.loop.eval_every_steps": 0,
                          "trainer.checkpoint.dir": str(tmp_path / "c"),
                          "trainer.checkpoint.export_dir": str(tmp_path)})
    writable.check(no_eval)  # no evaluation, no snapshots written


def test_the_tensorboard_dir_is_the_chiefs_and_empty_is_off(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    places = {"trainer.checkpoint.dir": str(tmp_path / "c"), "trainer.checkpoint.export_dir": str(tmp_path / "e"),
              "trainer.loop.snapshot_dir": str(tmp_path / "s"), "trainer.loop.tensorboard_dir": str(blocker / "tb")}
    with pytest.raises(ConfigError, match=r"^config key 'trainer.loop.tensorboard_dir': .* is a file, not a dir"):
        writable.check(load(None, places))
    writable.check(load(None, {**places, "trainer.loop.tensorboard_dir": ""}))  # off: nothing to write
    writable.check(load(None, {**places, "trainer.cluster.scratch_dir": str(tmp_path / "x"),
                               "trainer.cluster.workers": ["h:1", "h:2"], "trainer.cluster.index": 1}))  # not the chief


def test_check_config_refuses_a_place_the_trainer_cannot_write(tmp_path: Path) -> None:
    """check-config runs the same offline checks as run: a checkpoint directory that is a file is one line."""
    import subprocess
    import sys

    import yaml

    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"checkpoint": {"dir": str(blocker / "checkpoints")}}}))
    proc = subprocess.run([sys.executable, "-m", "stream_trainer.cli", "check-config", str(path)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"stream-trainer: error: config key 'trainer.checkpoint.dir': cannot create {blocker / 'checkpoints'}: "
        f"{blocker} is a file, not a directory"], proc.stderr
    assert not proc.stdout
