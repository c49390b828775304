"""The replay store on its own: numpy arrays in, numpy arrays out, no broker and no TensorFlow.

Examples carry their identity in their pixels (``_batch``), so every test can check that the
pixels in a slot still belong to the (partition, offset) recorded for it.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pytest

from stream_trainer.learn.replay import Example, Fetch, Policy, ReplayStore, RestoreResult, merge_states

I64 = npt.NDArray[np.int64]
S = 4  # tiny images: the store's logic does not depend on the size
PER_MEMBER = S * S * 4


def _pixels(partition: int, offset: int) -> Example:
    """An example whose image encodes (partition, offset) and whose mask is a class 0..2 pattern."""
    image = np.zeros((S, S, 3), np.uint8)
    image[..., 0] = partition
    image[..., 1] = offset % 256
    image[..., 2] = offset // 256 % 256
    mask = ((np.arange(S * S).reshape(S, S, 1) + offset) % 3).astype(np.uint8)
    return image, mask


def _batch(offsets: range | list[int], partition: int | list[int] = 0) -> tuple[npt.NDArray[np.uint8],
                                                                             npt.NDArray[np.uint8], I64, I64]:
    """``add``'s arguments for these offsets: ``_pixels`` of each, stacked (vectorised: 10,000 adds)."""
    offs = np.array(list(offsets), np.int64)
    parts = np.array(partition if isinstance(partition, list) else [partition] * len(offs), np.int64)
    images = np.zeros((len(offs), S, S, 3), np.uint8)
    for channel, value in enumerate((parts, offs % 256, offs // 256 % 256)):
        images[..., channel] = value[:, None, None]
    masks = ((np.arange(S * S)[None, :] + offs[:, None]) % 3).astype(np.uint8).reshape(-1, S, S, 1)
    return images, masks, parts, offs


def _stream(store: ReplayStore, n: int, batch: int = 37, partitions: int = 1) -> None:
    """Offer offsets 0..n-1 in batches; offset i comes from partition i % partitions."""
    for start in range(0, n, batch):
        offs = range(start, min(n, start + batch))
        store.add(*_batch(offs, [o % partitions for o in offs]))


def _assert_pixels_match_members(store: ReplayStore) -> None:
    images, masks = store._images[:len(store)], store._masks[:len(store)]
    for slot, (p, o) in enumerate(store._members[:len(store)].tolist()):
        image, mask = _pixels(p, o)
        assert np.array_equal(images[slot], image) and np.array_equal(masks[slot], mask), (slot, p, o)


def _fetch_all(seen: list[I64] | None = None, missing: frozenset[tuple[int, int]] = frozenset()) -> Fetch:
    """A fetch that re-creates any member, as re-reading Kafka would, except ``missing`` ones."""

    def fetch(members: I64) -> Mapping[tuple[int, int], Example | None]:
        if seen is not None:
            seen.append(members.copy())
        out: dict[tuple[int, int], Example | None] = {}
        for p, o in members.tolist():
            out[(p, o)] = None if (p, o) in missing else _pixels(p, o)
        return out

    return fetch


# --- size ------------------------------------------------------------------------------------------


def test_capacity_is_capacity_bytes_over_four_bytes_per_pixel_and_too_small_is_refused() -> None:
    assert ReplayStore(10 * PER_MEMBER + PER_MEMBER - 1, S, seed=0).capacity == 10
    store = ReplayStore(128 * 128 * 4 * 500, 128, seed=0)
    assert store.capacity == 500
    assert store.nbytes == 500 * (128 * 128 * 4 + 16)  # pixels plus two int64 per member
    with pytest.raises(ValueError, match="holds no 4x4 example"):
        ReplayStore(PER_MEMBER - 1, S, seed=0)
    with pytest.raises(ValueError, match="policy"):
        ReplayStore(PER_MEMBER, S, seed=0, policy="lifo")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["reservoir", "fifo"])
def test_store_never_holds_more_than_capacity_and_memory_stays_flat_over_10000_adds(policy: Policy) -> None:
    store = ReplayStore(50 * PER_MEMBER, S, seed=1, policy=policy)
    allocated = store.nbytes
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        offset = 0
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10_000):
            n = int(rng.integers(0, 9))
            store.add(*_batch(range(offset, offset + n), [int(p) for p in rng.integers(0, 4, n)]))
            offset += n
            assert len(store) <= store.capacity and store.nbytes == allocated
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == store.capacity and store.seen == offset
    # A per-add allocation that stayed alive (a growing list, a reallocated array) would be
    # tens of kilobytes here; the store's own arrays were allocated before tracing began.
    assert grown < 8_000, grown
    _assert_pixels_match_members(store)


# Measured in a fresh interpreter: in the test process, pages freed by earlier tests may already
# be resident and hide the store's own.
_RESIDENT_PROBE = """
import os
from stream_trainer.learn.replay import ReplayStore
def resident():
    with open("/proc/self/statm") as f:  # Linux: resident pages are the second field
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
store = ReplayStore(64 * 2**20, 128, seed=0)
print(resident() - before, store.nbytes)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_store_memory_is_resident_from_construction_not_from_the_first_hours_of_training() -> None:
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", _RESIDENT_PROBE], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    grown, nbytes = (int(x) for x in out.split())
    assert grown > 0.9 * nbytes


# --- reservoir statistics ----------------------------------------------------------------------

CHI2_9DOF_999 = 27.877  # chi-square quantile 0.999 with 9 degrees of freedom


def _decile_chi_square(members_per_run: list[I64], stream: int) -> tuple[float, list[int]]:
    """Chi-square of member counts over the stream's ten deciles against a uniform share."""
    offsets = np.concatenate([m[:, 1] for m in members_per_run])
    counts = np.bincount(offsets * 10 // stream, minlength=10)
    expected = len(offsets) / 10
    return float(((counts - expected) ** 2 / expected).sum()), counts.tolist()


def _run(policy: Policy, seed: int, stream: int = 10_000, capacity: int = 500) -> I64:
    store = ReplayStore(capacity * PER_MEMBER, S, seed=seed, policy=policy)
    _stream(store, stream, batch=50)
    return store.members()


def test_reservoir_keeps_early_and_late_examples_with_equal_probability() -> None:
    # 10,000 ids through a capacity-500 store: every id should end up inside with probability
    # 500/10,000. Pooled over 20 fixed seeds (10,000 members, 1,000 expected per decile of the
    # stream), a uniform sample has chi-square < 27.9 (the 99.9% point); being seeded, the test
    # is deterministic (it measures 7.3). A FIFO puts every member in the last decile (9,000 for
    # the two runs below); always replacing a random slot once full (j ~ U{0..capacity-1}, the
    # classic bug) keeps mostly the last ~1,500 ids.
    runs = [_run("reservoir", seed) for seed in range(20)]
    chi2, counts = _decile_chi_square(runs, 10_000)
    assert chi2 < CHI2_9DOF_999, (chi2, counts)
    # The first 500 ids fill the store deterministically; they too must end at about 5%
    # (binomial over 20 runs x 500 ids = 10,000 trials: mean 500, sd ~ 22; allow 5 sd).
    first = sum(int((m[:, 1] < 500).sum()) for m in runs)
    last = sum(int((m[:, 1] >= 9_500).sum()) for m in runs)
    assert abs(first - 500) < 110 and abs(last - 500) < 110, (first, last)
    fifo_chi2, _ = _decile_chi_square([_run("fifo", seed) for seed in range(2)], 10_000)
    assert fifo_chi2 > 100 * CHI2_9DOF_999  # the statistic tells a FIFO apart


def test_fifo_keeps_the_newest_in_age_order_even_when_one_batch_exceeds_capacity() -> None:
    store = ReplayStore(100 * PER_MEMBER, S, seed=0, policy="fifo")
    _stream(store, 1_000, batch=37)
    assert store.members()[:, 1].tolist() == list(range(900, 1_000))
    store.add(*_batch(range(1_000, 1_250)))  # 250 at once: only the last 100 of them stay
    assert store.members()[:, 1].tolist() == list(range(1_150, 1_250))
    assert store.seen == 1_250
    _assert_pixels_match_members(store)


@pytest.mark.parametrize("policy", ["reservoir", "fifo"])
def test_examples_are_each_members_pixels_in_members_order(policy: Policy) -> None:
    store = ReplayStore(50 * PER_MEMBER, S, seed=2, policy=policy)
    _stream(store, 333, batch=37, partitions=2)  # past capacity: the fifo's head has moved
    images, masks = store.examples()
    assert len(images) == len(masks) == len(store) == 50
    for (p, o), image, mask in zip(store.members().tolist(), images, masks, strict=True):
        expected = _pixels(p, o)
        assert np.array_equal(image, expected[0]) and np.array_equal(mask, expected[1]), (p, o)


def test_reservoir_fills_free_slots_first_then_keeps_pixels_with_their_positions() -> None:
    store = ReplayStore(30 * PER_MEMBER, S, seed=3)
    store.add(*_batch(range(20)))
    assert store.members()[:, 1].tolist() == list(range(20))
    _stream(store, 2_000, batch=64)
    assert len(store) == 30
    _assert_pixels_match_members(store)


@pytest.mark.parametrize("policy", ["reservoir", "fifo"])
def test_a_batch_means_the_same_as_its_examples_added_one_by_one(policy: Policy) -> None:
    # Batches of 64 into 30 slots early in the stream: many examples of one batch draw the same
    # slot, and only the last of them may stay (it would have evicted the others one by one).
    stores = {}
    for batch in (1, 7, 64, 400):
        stores[batch] = ReplayStore(30 * PER_MEMBER, S, seed=3, policy=policy)
        _stream(stores[batch], 400, batch=batch)
    for batch in (7, 64, 400):
        assert np.array_equal(stores[batch].members(), stores[1].members()), batch
    _assert_pixels_match_members(stores[64])


def test_add_rejects_wrong_shapes_dtypes_and_trimap_values_without_changing_the_store() -> None:
    store = ReplayStore(10 * PER_MEMBER, S, seed=0)
    images, masks, parts, offs = _batch(range(3))
    with pytest.raises(ValueError, match="expected"):
        store.add(images[:, :2], masks, parts, offs)
    with pytest.raises(TypeError, match="uint8"):
        store.add(images.astype(np.float32), masks, parts, offs)
    with pytest.raises(ValueError, match=r"classes 0\.\.2"):
        store.add(images, masks + np.uint8(1), parts, offs)
    assert (len(store), store.seen) == (0, 0)
    store.add(images, masks[..., 0], parts, offs)  # (n, S, S) masks are fine too
    assert len(store) == 3


# --- sampling ----------------------------------------------------------------------------------


def test_sample_draws_members_without_replacement_and_returns_copies() -> None:
    store = ReplayStore(40 * PER_MEMBER, S, seed=5)
    assert store.sample(4) is None
    _stream(store, 300)
    members = {tuple(m) for m in store.members().tolist()}

    def ids(images: npt.NDArray[np.uint8]) -> list[tuple[int, int]]:
        return [(int(i[0, 0, 0]), int(i[0, 0, 1]) + 256 * int(i[0, 0, 2])) for i in images]

    drawn = store.sample(40)
    assert drawn is not None
    images, masks = drawn
    assert images.shape == (40, S, S, 3) and masks.shape == (40, S, S, 1)
    assert sorted(ids(images)) == sorted(members)  # all 40, each exactly once
    part = store.sample(25)
    assert part is not None and len(set(ids(part[0]))) == 25 and set(ids(part[0])) <= members
    many = store.sample(100)  # more than len: with replacement
    assert many is not None and len(many[0]) == 100 and set(ids(many[0])) <= members
    images[:] = 255
    _assert_pixels_match_members(store)


# --- checkpoint state --------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["reservoir", "fifo"])
def test_state_round_trip_resumes_exactly_as_an_uninterrupted_store(policy: Policy) -> None:
    original = ReplayStore(50 * PER_MEMBER, S, seed=9, policy=policy)
    _stream(original, 1_000, partitions=3)
    state = json.loads(json.dumps(original.state()))  # the checkpoint stores it as JSON
    assert len(json.dumps(state)) < 50 * 40 + 1_000  # positions and counters only, no pixels

    fetched: list[I64] = []
    resumed = ReplayStore(50 * PER_MEMBER, S, seed=12345, policy=policy)
    result = resumed.restore(state, _fetch_all(fetched))

    assert result == RestoreResult(restored=50, lost=0)
    assert len(fetched) == 1 and np.array_equal(fetched[0], original.members())
    assert np.array_equal(resumed.members(), original.members()) and resumed.seen == original.seen == 1_000
    _assert_pixels_match_members(resumed)
    for store in (original, resumed):  # same generator state: the same future decisions
        store.add(*_batch(range(1_000, 1_200)))
    assert np.array_equal(resumed.members(), original.members())
    a, b = original.sample(10), resumed.sample(10)
    assert a is not None and b is not None and np.array_equal(a[0], b[0])


def test_restore_drops_and_counts_members_fetch_cannot_return() -> None:
    original = ReplayStore(40 * PER_MEMBER, S, seed=2)
    _stream(original, 500)
    members = [tuple(m) for m in original.members().tolist()]
    gone = frozenset(members[:7])  # deleted by retention: fetch says None

    def fetch(wanted: I64) -> Mapping[tuple[int, int], Example | None]:
        out = dict(_fetch_all(missing=gone)(wanted))
        del out[members[-1]]  # and one it does not mention at all
        return out

    store = ReplayStore(40 * PER_MEMBER, S, seed=2)
    assert store.restore(original.state(), fetch) == RestoreResult(restored=32, lost=8)
    assert [tuple(m) for m in store.members().tolist()] == members[7:-1]
    assert store.seen == 500
    _assert_pixels_match_members(store)
    store.add(*_batch(range(500, 508)))  # the freed slots fill first
    assert len(store) == 40 and store.members()[-8:, 1].tolist() == list(range(500, 508))


def test_restore_of_a_bigger_store_keeps_a_sample_reservoir_or_the_newest_fifo() -> None:
    policies: tuple[Policy, ...] = ("reservoir", "fifo")
    for policy in policies:
        big = ReplayStore(100 * PER_MEMBER, S, seed=0, policy=policy)
        _stream(big, 1_000)
        fetched: list[I64] = []
        small = ReplayStore(30 * PER_MEMBER, S, seed=0, policy=policy)
        assert small.restore(big.state(), _fetch_all(fetched)) == RestoreResult(30, 0, over_capacity=70)
        assert len(fetched[0]) == 30  # nothing fetched that would not fit
        kept = small.members()[:, 1].tolist()
        assert set(kept) <= set(big.members()[:, 1].tolist())
        if policy == "fifo":
            assert kept == list(range(970, 1_000))
        _assert_pixels_match_members(small)


def test_restore_of_some_partitions_takes_only_their_members_and_their_seen_count() -> None:
    original = ReplayStore(60 * PER_MEMBER, S, seed=4)
    _stream(original, 1_200, partitions=4)  # 300 offered from each partition
    fetched: list[I64] = []
    worker = ReplayStore(60 * PER_MEMBER, S, seed=7)
    result = worker.restore(original.state(), _fetch_all(fetched), partitions=[1, 3])

    mine = original.members()[np.isin(original.members()[:, 0], [1, 3])]
    assert result == RestoreResult(restored=len(mine), lost=0)
    assert np.array_equal(worker.members(), mine) and np.array_equal(fetched[0], mine)
    assert worker.seen == 600
    assert worker.state()["seen_by_partition"] == [[1, 300], [3, 300]]
    _assert_pixels_match_members(worker)


def test_merged_states_of_two_workers_restore_onto_a_new_split_of_partitions() -> None:
    old = []
    for parts in ([0, 2], [1, 3]):
        store = ReplayStore(40 * PER_MEMBER, S, seed=parts[0])
        for start in range(0, 400, 20):
            offs = range(start, start + 20)
            store.add(*_batch(offs, [parts[o % 2] for o in offs]))
        old.append(store)
    merged = merge_states([s.state() for s in old])
    assert merged["seen"] == 800 and merged["capacity"] == 80
    assert merged["seen_by_partition"] == [[0, 200], [1, 200], [2, 200], [3, 200]]
    assert sorted(map(tuple, merged["members"])) == sorted(
        tuple(m) for s in old for m in s.members().tolist())

    new = ReplayStore(80 * PER_MEMBER, S, seed=1)
    result = new.restore(merged, _fetch_all(), partitions=[0, 1])
    expected = {tuple(m) for s in old for m in s.members().tolist() if m[0] in (0, 1)}
    assert result.restored == len(expected) and {tuple(m) for m in new.members().tolist()} == expected
    assert new.seen == 400


def test_merged_fifo_states_keep_every_workers_newest_when_the_new_store_is_smaller() -> None:
    a = ReplayStore(10 * PER_MEMBER, S, seed=0, policy="fifo")
    b = ReplayStore(10 * PER_MEMBER, S, seed=0, policy="fifo")
    a.add(*_batch(range(30), 0))
    b.add(*_batch(range(100, 130), 1))
    small = ReplayStore(6 * PER_MEMBER, S, seed=0, policy="fifo")
    small.restore(merge_states([a.state(), b.state()]), _fetch_all())
    assert sorted(map(tuple, small.members().tolist())) == [(0, 27), (0, 28), (0, 29), (1, 127), (1, 128), (1, 129)]
    with pytest.raises(ValueError, match="policies"):
        merge_states([a.state(), ReplayStore(PER_MEMBER, S, seed=0).state()])
