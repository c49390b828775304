"""Fault-injection scenarios (issue 7): hooks and fixtures; the harness itself is ``faultlib.py``.

Scenarios marked ``faults`` and ``slow`` run only with ``--run-faults`` (``make test-faults``, which
is ``pytest -m faults --run-faults``); the fast ones also run in every ``make test``. The option
and the skip are in ``tests/conftest.py``, so a slow scenario outside this folder is skipped too.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultlib import Rig, make_rig


@pytest.fixture()
def rig(tmp_path: Path, kafka_bootstrap: str, reader: str, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A rig (2 partitions, ``reader``'s trainers) on the session's broker; every program it started is
    stopped afterwards."""
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_"))[:20].strip("-")
    r = make_rig(tmp_path, kafka_bootstrap, partitions=2, prefix=prefix, reader=reader)
    try:
        yield r
    finally:
        r.stop_all()


@pytest.fixture()
def rng(request: pytest.FixtureRequest) -> random.Random:
    """Random fault timing, reproducible: FAULT_SEED=N replays a run (the seed is in the test's output)."""
    seed = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"{request.node.name}: FAULT_SEED={seed}")
    return random.Random(seed)


