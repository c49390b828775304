"""The two readers behind ``trainer.source.reader``, as test parameters.

``READERS``: both, for the reader contract tests of ``make test`` (tensorflow-io skipped on the
stack without it, tests/stacks.py). ``READERS_SLOW_OTHER``: both, the stack's default reader in ``make test`` and
the other one only in ``make test-faults`` (marked ``slow``), for scenarios that take minutes.
"""

from __future__ import annotations

import pytest

from stream_trainer import tfenv
from tests.stacks import needs_tfio


def _marks(reader: str, slow_unless_default: bool) -> list[pytest.MarkDecorator]:
    marks = [needs_tfio] if reader == tfenv.TENSORFLOW_IO else []
    if slow_unless_default and reader != tfenv.default_reader():
        marks.append(pytest.mark.slow)
    return marks


READERS = [pytest.param(r, marks=_marks(r, False), id=r) for r in tfenv.READERS]
READERS_SLOW_OTHER = [pytest.param(r, marks=_marks(r, True), id=r) for r in tfenv.READERS]
