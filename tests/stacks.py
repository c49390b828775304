"""Which of the two supported stacks a test run is on (docs/stacks.md), for tests whose subject only one has.

Decided by the Python version, as the Makefile and pyproject.toml decide it, and not by whether
tensorflow-io happens to import: on 3.11/3.12 a missing tensorflow-io must fail its tests, not skip them.
"""

from __future__ import annotations

import sys

import pytest

TFIO_STACK = sys.version_info < (3, 13)

needs_tfio = pytest.mark.skipif(
    not TFIO_STACK,
    reason="tensorflow-io's subject: Python 3.13 runs current TensorFlow without tensorflow-io, whose last "
           "release (0.37.1) is built for TensorFlow 2.16 and Python <= 3.12 only (docs/stacks.md)")
