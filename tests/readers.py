"""The two readers behind ``trainer.source.reader``, as test parameters.

``READERS``: both, for the reader contract tests of ``make test`` (tensorflow-io skipped where it
is not installed). ``READERS_SLOW_OTHER``: both, the stack's default reader in ``make test`` and
the other one only in ``make test-faults`` (marked ``slow``), for scenarios that take minutes.
"""

from __future__ import annotations

import pytest

from stream_trainer import tfenv

_NO_TFIO = pytest.mark.skipif(not tfenv.tensorflow_io_installed(),
                              reason="tensorflow-io is not installed on this stack")


def _marks(reader: str, slow_unless_default: bool) -> list[pytest.MarkDecorator]:
    marks = [_NO_TFIO] if reader == tfenv.TENSORFLOW_IO else []
    if slow_unless_default and reader != tfenv.default_reader():
        marks.append(pytest.mark.slow)
    return marks


READERS = [pytest.param(r, marks=_marks(r, False), id=r) for r in tfenv.READERS]
READERS_SLOW_OTHER = [pytest.param(r, marks=_marks(r, True), id=r) for r in tfenv.READERS]
