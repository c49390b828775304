"""A place the trainer must write that it cannot: one line naming the key, exit 2, before anything starts.

Tried as a new user would: a checkpoint directory that is a file, a trained log whose folder
cannot be created because a file is in the way, and the same for every other path the trainer
writes. Found before TensorFlow loads and before anything connects (the bootstrap address here
answers nobody), so each costs a fraction of a second, not a traceback minutes later.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultlib import ROOT, child_env, free_port

PREFIX = "stream-trainer: error: "


def _config(tmp_path: Path, **dotted: Any) -> Path:
    data: dict[str, Any] = {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "connect_timeout_s": 3},
        "trainer": {"metrics": {"port": 0},
                    "checkpoint": {"dir": str(tmp_path / "ckpt"), "export_dir": str(tmp_path / "export")},
                    "loop": {"snapshot_dir": str(tmp_path / "snapshots"),
                             "tensorboard_dir": str(tmp_path / "tensorboard")}}}
    for key, value in dotted.items():
        node = data
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    return path


# (case, the YAML's overrides given a file in the way, the key named, what the line says)
CASES: list[tuple[str, Any, str, str]] = [
    ("checkpoint_dir_is_a_file", lambda f: {"trainer__checkpoint__dir": str(f)},
     "trainer.checkpoint.dir", "is a file, not a directory"),
    ("checkpoint_dir_under_a_file", lambda f: {"trainer__checkpoint__dir": str(f / "ckpt")},
     "trainer.checkpoint.dir", "is a file, not a directory"),
    ("trained_log_folder_under_a_file", lambda f: {"trainer__loop__trained_log": str(f / "logs" / "trained.log")},
     "trainer.loop.trained_log", "is a file, not a directory"),
    ("trained_log_is_a_directory", lambda f: {"trainer__loop__trained_log": str(f.parent)},
     "trainer.loop.trained_log", "is a directory, not a file"),
    ("export_dir_is_a_file", lambda f: {"trainer__checkpoint__export_dir": str(f)},
     "trainer.checkpoint.export_dir", "is a file, not a directory"),
    ("snapshot_dir_under_a_file", lambda f: {"trainer__loop__snapshot_dir": str(f / "snaps")},
     "trainer.loop.snapshot_dir", "is a file, not a directory"),
    ("tensorboard_dir_under_a_file", lambda f: {"trainer__loop__tensorboard_dir": str(f / "tb")},
     "trainer.loop.tensorboard_dir", "is a file, not a directory"),
    ("scratch_dir_is_a_file", lambda f: {"trainer__cluster__scratch_dir": str(f),
                                         "trainer__cluster__workers": ["127.0.0.1:1", "127.0.0.1:2"],
                                         "trainer__cluster__index": 1},
     "trainer.cluster.scratch_dir", "is a file, not a directory"),
]


@pytest.mark.faults
@pytest.mark.parametrize(("case", "overrides", "key", "says"), CASES, ids=[c[0] for c in CASES])
def test_a_path_the_trainer_cannot_write_is_one_line_naming_the_key_and_exit_2(
        tmp_path: Path, case: str, overrides: Any, key: str, says: str) -> None:
    in_the_way = _a_file(tmp_path)
    config = _config(tmp_path, **overrides(in_the_way))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stream_trainer.cli", "run", "--config", str(config)], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"{case}: exit {proc.returncode}:\n{output[-3000:]}"
    assert "Traceback" not in output and "terminate" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), f"{case}: not one line:\n{output[-3000:]}"
    named = in_the_way.parent if case == "trained_log_is_a_directory" else in_the_way
    assert f"config key '{key}'" in lines[0] and says in lines[0] and str(named) in lines[0], lines[0]
    assert took < 15, f"{case}: {took:.1f} s: TensorFlow loaded, or something connected, before the check"
    print(f"{case}: {took:.1f} s: {lines[0]}")
