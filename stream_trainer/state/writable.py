"""Every file and directory the trainer writes, checked before anything starts.

A new user's mistakes (a checkpoint directory that is a file, a trained log under a file, an
export directory nobody may write) must be one line naming the config key, found before the
readers start and before TensorFlow loads, not a traceback from the first write minutes later.
Nothing is created here (``check-config`` may ask too): a directory must be one, or be creatable
(its nearest existing ancestor is a writable directory); a file must not be a directory and its
directory passes the same test. The places that write still fail cleanly if something changes
after this check.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from stream_trainer.config import Settings
from stream_trainer.errors import ConfigError


def directory_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a directory this process writes into, or None when it can."""
    target = Path(path)
    if target.is_dir():
        return None if os.access(target, os.W_OK | os.X_OK) else f"{target} is not writable"
    if target.exists() or target.is_symlink():
        return f"{target} is a file, not a directory"
    for ancestor in target.parents:
        if ancestor.is_dir():
            return None if os.access(ancestor, os.W_OK | os.X_OK) else \
                f"cannot create {target}: {ancestor} is not writable"
        if ancestor.exists():
            return f"cannot create {target}: {ancestor} is a file, not a directory"
    return None


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a file this process appends to, or None when it can."""
    target = Path(path)
    if target.is_dir():
        return f"{target} is a directory, not a file"
    if target.exists() and not os.access(target, os.W_OK):
        return f"{target} is not writable"
    return directory_problem(target.parent)


def places(settings: Settings) -> list[tuple[str, str, bool]]:
    """(config key, path, is a directory) for everything this worker will write."""
    t = settings.trainer
    out: list[tuple[str, str, bool]] = []
    if t.cluster.index == 0:  # the chief: the job's checkpoints, exports, eval snapshots and event files
        out += [("trainer.checkpoint.dir", t.checkpoint.dir, True),
                ("trainer.checkpoint.export_dir", t.checkpoint.export_dir, True)]
        if t.loop.eval_every_steps and t.loop.snapshot_dir:
            out.append(("trainer.loop.snapshot_dir", t.loop.snapshot_dir, True))
        if t.loop.tensorboard_dir:
            out.append(("trainer.loop.tensorboard_dir", t.loop.tensorboard_dir, True))
    else:  # the others: scratch copies of every save
        out.append(("trainer.cluster.scratch_dir", t.cluster.scratch_dir or tempfile.gettempdir(), True))
    if t.loop.trained_log:
        out.append(("trainer.loop.trained_log", t.loop.trained_log, False))
    return out


def check(settings: Settings) -> None:
    """Raise a ``ConfigError`` naming the key of the first place this worker could not write."""
    for key, path, is_directory in places(settings):
        problem = directory_problem(path) if is_directory else file_problem(path)
        if problem:
            msg = f"config key '{key}': {problem}"
            raise ConfigError(msg)
