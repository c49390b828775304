"""What hard kills leave behind, removed at the next start: only what is provably ours and stale.

A trainer SIGKILLed (or OOM-killed) again and again must not fill a disk. Two things would pile up:

* **scratch directories** of non-chief workers (``CheckpointStore`` makes one per start and
  removes it in ``close``, which a kill skips). Each holds a ``flock`` on its ``.owner`` file
  for the life of its process (``ownership.DirectoryLock``), so one whose lock can be taken
  belongs to a process that is gone, whichever it was: it is removed at the next start of any
  worker sharing the root. A new one is made under a dot-name, locked, then renamed, so a sweep
  never finds a live directory before its lock is held. Directories without an ``.owner`` (made
  by versions before this one) are left alone: nothing proves them stale.
* **TensorFlow's temporary files** in the checkpoint directory: ``checkpoint.tmp<32 hex>`` (the
  index file's atomic write; a kill leaves it, often empty) and ``ckpt-<n>_temp/`` (a save's
  shards before the merge). The chief removes them once it holds the directory's lock: no other
  trainer can be writing there.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

from stream_trainer.state.ownership import DirectoryLock

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "stream-trainer-worker"
_ABANDONED_FILE = re.compile(r"checkpoint\.tmp[0-9a-f]{32}")
_ABANDONED_DIR = re.compile(r"ckpt-\d+_temp")
_held: dict[str, DirectoryLock] = {}  # this process's scratch directories and their locks


def make_scratch(base: str, index: int) -> str:
    """A new scratch directory for worker ``index`` under ``base`` (default: the temp dir), locked.

    Stale ones under the same root are removed first."""
    root = Path(base or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(root)
    making = Path(tempfile.mkdtemp(prefix=f".{SCRATCH_PREFIX}{index}-new-", dir=root))
    lock = DirectoryLock(making, key="trainer.cluster.scratch_dir")
    if not lock.try_acquire():  # nobody else knows the fresh name
        msg = f"cannot lock the new scratch directory {making}"
        raise RuntimeError(msg)
    final = root / making.name.replace(f".{SCRATCH_PREFIX}{index}-new-", f"{SCRATCH_PREFIX}{index}-", 1)
    making.rename(final)  # the open lock file moves with it
    lock.path = final / lock.path.name
    _held[str(final)] = lock
    return str(final)


def remove_scratch(path: str) -> None:
    """Remove this process's scratch directory ``path`` and drop its lock."""
    shutil.rmtree(path, ignore_errors=True)
    lock = _held.pop(path, None)
    if lock is not None:
        lock.release()


def remove_stale_scratch(root: Path) -> int:
    """Remove every scratch directory under ``root`` whose owner process is gone; how many."""
    removed = 0
    for candidate in sorted(root.glob(f"{SCRATCH_PREFIX}*-*")):
        if candidate.is_symlink() or not candidate.is_dir() or not (candidate / ".owner").is_file():
            continue
        lock = DirectoryLock(candidate)
        if not lock.try_acquire():
            continue  # a live worker's
        shutil.rmtree(candidate, ignore_errors=True)
        lock.release()
        removed += 1
    if removed:
        log.info("removed %d scratch directories left in %s by workers that were killed", removed, root)
    return removed


def remove_abandoned_writes(checkpoint_dir: str | Path) -> int:
    """Remove TensorFlow's temporary files a killed save left in ``checkpoint_dir``; how many.

    Call only while holding the directory's lock (``ownership.claim``)."""
    directory = Path(checkpoint_dir)
    removed = 0
    for entry in directory.iterdir() if directory.is_dir() else ():
        if entry.is_symlink():
            continue
        if entry.is_file() and _ABANDONED_FILE.fullmatch(entry.name):
            entry.unlink(missing_ok=True)
        elif entry.is_dir() and _ABANDONED_DIR.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            continue
        removed += 1
    if removed:
        log.info("removed %d temporary files of interrupted saves from %s", removed, directory)
    return removed
