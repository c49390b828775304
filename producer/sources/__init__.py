"""Where labelled images come from: a folder in the Oxford-IIIT Pet layout, tensorflow-datasets,
or the synthetic generator. Each source yields wire records (and the items it had to skip) one
pass at a time; the app decides what to send where.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from stream_trainer.config import ProducerSourceConfig
from stream_trainer.errors import ConfigError
from stream_trainer.wire import PetRecord

# The reasons an item is skipped; they are the values of the skipped metric's label.
MISSING_TRIMAP = "missing_trimap"
UNREADABLE = "unreadable"
OVERSIZE = "oversize"


@dataclass(frozen=True)
class Skip:
    """An item a source could not turn into a record; reported once per run, not once per pass."""

    name: str
    reason: str
    detail: str = ""


class Source(Protocol):
    """A replayable collection of labelled images."""

    def iterate(self, pass_index: int, shuffle: bool, include_test: bool) -> Iterator[PetRecord | Skip]:
        """Yield one pass; shuffled in a seeded order per pass; test-split records only if asked."""
        ...


def pass_order(size: int, seed: int, pass_index: int, shuffle: bool) -> list[int]:
    """Indices 0..size-1 in this pass's order: a permutation seeded by (seed, pass) or natural order."""
    if not shuffle:
        return list(range(size))
    return [int(i) for i in np.random.default_rng([seed, pass_index]).permutation(size)]


def open_source(config: ProducerSourceConfig) -> Source:
    """Build the source ``config.kind`` names; ConfigError when it cannot be used."""
    if config.kind == "synthetic":
        from producer.sources.synthetic import SyntheticSource

        return SyntheticSource(config)
    if config.kind == "dir":
        from producer.sources.directory import DirectorySource

        return DirectorySource(config)
    if config.kind == "tfds":
        from producer.sources.tfds import TfdsSource

        return TfdsSource(config)
    msg = f"config key 'producer.source.kind' must be one of synthetic, dir, tfds, got {config.kind!r}"
    raise ConfigError(msg)
