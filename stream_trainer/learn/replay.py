"""A bounded store of past training examples, replayed next to fresh ones so that a model
trained on a drifting stream keeps what it learnt earlier (issue 14).

Why reservoir sampling by default, not a FIFO of the most recent examples: on a drifting stream
(phase A for hours, then phase B) the question is which past the store remembers. A reservoir
(Algorithm R over the whole stream) is a uniform sample of every example ever offered, so each
phase stays represented in proportion to how long it lasted: after 10 hours of A and 1 of B,
about 10/11 of the store is A, and A keeps being rehearsed while B trains. A FIFO holds only
the last ``capacity`` examples: it forgets old phases exactly as fast as the stream moves, so
after ``capacity`` examples of B nothing of A is left to rehearse, which is the forgetting the
store exists to prevent. FIFO stays available for streams that should forget (a recency window).

The price of uniformity: a reservoir has zero freshness bias. Once it holds a million examples,
a new one gets in with probability capacity / a million, so samples from it are almost all old.
Fresh data must therefore come from the fresh part of each training batch (the messages just
read from Kafka), never from the store; the store only supplies the replayed part.

Memory: images and masks live as uint8 in arrays allocated once, sized by ``capacity_bytes``
(``S*S*3`` image bytes + ``S*S`` mask bytes per member), and every page is written at
construction, so a store that does not fit fails at start rather than hours into a run, and
resident memory stays flat afterwards. ``add`` and ``sample`` copy into and out of those arrays
and never allocate per member.

Checkpoints hold no pixels: ``state()`` is the members' Kafka ``(partition, offset)`` pairs,
the count of examples seen and the random generator's state, a few bytes per member as plain
JSON-able Python values. ``restore`` re-reads the members through a ``fetch`` callable the
trainer supplies; members that retention deleted (or that no longer decode) are dropped and
counted. After a change of worker count, ``merge_states`` joins the old workers' states and each
new worker restores the members of its own partitions.

This module is pure numpy: no TensorFlow, no Kafka.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, cast, get_args

import numpy as np
import numpy.typing as npt

Policy = Literal["reservoir", "fifo"]
POLICIES: tuple[Policy, ...] = get_args(Policy)
STATE_VERSION = 1
MAX_CLASS = 2  # masks hold classes 0..2 (trimap value - 1), as the pipeline produces them

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
Example = tuple[U8, U8]
# fetch(members (k, 2) int64) -> {(partition, offset): (image (S, S, 3), mask (S, S, 1)) or None}
Fetch = Callable[[I64], Mapping[tuple[int, int], Example | None]]


class ReplayState(TypedDict):
    """What a checkpoint saves for a store: JSON-able, no pixels."""

    version: int
    policy: str
    capacity: int
    seen: int  # fresh examples ever offered to add()
    seen_by_partition: list[list[int]]  # [partition, examples offered from it]
    members: list[list[int]]  # [partition, offset] per member; oldest first for fifo
    rng: dict[str, Any]  # numpy bit generator state, so a resumed run draws what it would have


@dataclass(frozen=True)
class RestoreResult:
    """What ``restore`` did: members back in the store, members ``fetch`` could not return,
    and members left out because they did not fit this store's capacity."""

    restored: int
    lost: int
    over_capacity: int = 0


class ReplayStore:
    """A fixed-memory sample of the training stream (see the module docstring for why)."""

    def __init__(self, capacity_bytes: int, image_size: int, seed: int, policy: Policy = "reservoir") -> None:
        """Allocate (and touch) the whole store now. ValueError if it cannot hold one example."""
        if policy not in POLICIES:
            msg = f"replay policy must be one of {', '.join(POLICIES)}, got {policy!r}"
            raise ValueError(msg)
        if image_size < 1:
            msg = f"replay image_size must be >= 1, got {image_size}"
            raise ValueError(msg)
        per_member = image_size * image_size * 4
        capacity = capacity_bytes // per_member
        if capacity < 1:
            msg = (f"replay capacity of {capacity_bytes} bytes holds no {image_size}x{image_size} example "
                   f"(one needs {per_member} bytes)")
            raise ValueError(msg)
        self._policy: Policy = policy
        self._size = image_size
        self._capacity = capacity
        self._rng = np.random.default_rng(seed)
        self._images: U8 = np.empty((capacity, image_size, image_size, 3), np.uint8)
        self._masks: U8 = np.empty((capacity, image_size, image_size, 1), np.uint8)
        self._members: I64 = np.empty((capacity, 2), np.int64)
        for array in (self._images, self._masks, self._members):
            array.fill(0)  # np.empty/np.zeros only reserve address space; writing commits the pages now
        self._len = 0
        # fifo: the slot of the oldest member. It moves only once the store is full, so the
        # occupied slots are always 0..len-1 for both policies.
        self._head = 0
        self._seen = 0
        self._seen_by_partition: dict[int, int] = {}

    @property
    def capacity(self) -> int:
        """Members the store can hold: ``capacity_bytes // (S*S*4)``."""
        return self._capacity

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def image_size(self) -> int:
        return self._size

    @property
    def seen(self) -> int:
        """Fresh examples ever offered to ``add`` (restored from checkpoints)."""
        return self._seen

    @property
    def nbytes(self) -> int:
        """Bytes allocated for the store (images, masks and member positions); constant."""
        return self._images.nbytes + self._masks.nbytes + self._members.nbytes

    def __len__(self) -> int:
        return self._len

    def add(self, images: U8, masks: U8, partitions: npt.ArrayLike, offsets: npt.ArrayLike) -> None:
        """Offer a batch of n fresh examples: images (n, S, S, 3) uint8, masks (n, S, S, 1) or
        (n, S, S) uint8 with classes 0..2, and each one's Kafka partition and offset (n,).

        reservoir: example i of the stream (0-based, counting every example ever offered) fills a
        free slot if there is one, else replaces slot ``j ~ U{0..i}`` when ``j < capacity``.
        fifo: the store keeps the most recent ``capacity`` examples. The arrays are copied.
        ValueError/TypeError for wrong shapes, dtypes or mask values; the store is then unchanged.
        """
        images, masks, parts, offs = self._check_batch(images, masks, partitions, offsets)
        n = len(parts)
        if n == 0:
            return
        first = self._seen
        self._seen += n
        for p, k in zip(*np.unique(parts, return_counts=True), strict=True):
            self._seen_by_partition[int(p)] = self._seen_by_partition.get(int(p), 0) + int(k)
        if self._policy == "fifo":
            self._add_fifo(images, masks, parts, offs)
            return
        free = min(n, self._capacity - self._len)
        if free:
            self._put(np.arange(self._len, self._len + free), np.arange(free), images, masks, parts, offs)
            self._len += free
        rest = np.arange(free, n)
        if rest.size:
            # Algorithm R: keep example i with probability capacity / (i + 1), evicting a uniform member.
            slots = self._rng.integers(0, first + rest + 1)
            kept = slots < self._capacity
            slots, rest = slots[kept], rest[kept]
            # Done one by one, a later example of the batch overwrites an earlier one that took the
            # same slot; keep only the last writer of each slot so the batch means the same.
            unique, last = np.unique(slots[::-1], return_index=True)
            self._put(unique, rest[::-1][last], images, masks, parts, offs)

    def _add_fifo(self, images: U8, masks: U8, parts: I64, offs: I64) -> None:
        n = len(parts)
        src = np.arange(max(0, n - self._capacity), n)  # older ones would be evicted within the batch
        appended = min(src.size, self._capacity - self._len)
        overwritten = src.size - appended
        slots = np.concatenate([self._len + np.arange(appended),  # head is 0 until the store is full
                                (self._head + np.arange(overwritten)) % self._capacity])
        self._put(slots, src, images, masks, parts, offs)
        self._len += appended
        self._head = (self._head + overwritten) % self._capacity

    def _put(self, slots: npt.NDArray[np.intp] | I64, src: npt.NDArray[np.intp] | I64, images: U8, masks: U8,
             parts: I64, offs: I64) -> None:
        self._images[slots] = images[src]
        self._masks[slots] = masks[src]
        self._members[slots, 0] = parts[src]
        self._members[slots, 1] = offs[src]

    def sample(self, n: int) -> tuple[U8, U8] | None:
        """n members as (images (n, S, S, 3), masks (n, S, S, 1)), uniformly without replacement
        (with replacement only when n > len); copies, in random order. None when the store is empty."""
        if n < 0:
            msg = f"sample size must be >= 0, got {n}"
            raise ValueError(msg)
        if self._len == 0:
            return None
        idx = self._rng.choice(self._len, size=n, replace=n > self._len)
        return self._images[idx], self._masks[idx]

    def members(self) -> I64:
        """(len, 2) int64 ``(partition, offset)`` of every member: slot order for reservoir,
        oldest first for fifo (the order ``restore`` needs to evict in the same order)."""
        return self._members[self._order()]

    def examples(self) -> tuple[U8, U8]:
        """Copies of every member's image (len, S, S, 3) and mask (len, S, S, 1), in ``members()`` order."""
        order = self._order()
        return self._images[order], self._masks[order]

    def _order(self) -> npt.NDArray[np.intp]:
        if self._policy == "fifo":
            return (self._head + np.arange(self._len)) % self._capacity
        return np.arange(self._len)

    def state(self) -> ReplayState:
        """What a checkpoint saves: positions and counters, never pixels; JSON-serialisable."""
        return ReplayState(
            version=STATE_VERSION,
            policy=self._policy,
            capacity=self._capacity,
            seen=self._seen,
            seen_by_partition=[[p, k] for p, k in sorted(self._seen_by_partition.items())],
            members=cast(list[list[int]], self.members().tolist()),
            rng=dict(self._rng.bit_generator.state),
        )

    def restore(self, state: Mapping[str, Any], fetch: Fetch,
                partitions: Collection[int] | None = None) -> RestoreResult:
        """Replace the store's contents with the members of ``state``, re-read through ``fetch``.

        ``partitions``: restore only the members of these partitions (after a change of worker
        count, each worker passes the partitions it now reads); ``seen`` then becomes the count
        offered from them, and the generator keeps this store's own seed. Without it the
        generator resumes too, so the run continues exactly as if it had not stopped.
        Members beyond this store's capacity are left out before fetching (reservoir: a uniform
        subset, which is still a uniform sample; fifo: the oldest). ``fetch`` is called once,
        with the members still wanted; members it maps to None or leaves out are lost. It must
        return arrays of this store's image size (ValueError otherwise).
        """
        if state.get("version") != STATE_VERSION:
            msg = f"replay state version {state.get('version')!r} is not {STATE_VERSION}"
            raise ValueError(msg)
        members = np.asarray(state["members"], dtype=np.int64).reshape(-1, 2)
        seen_by = {int(p): int(k) for p, k in state["seen_by_partition"]}
        if partitions is None:
            seen = int(state["seen"])
            self._rng.bit_generator.state = state["rng"]
        else:
            ours = {int(p) for p in partitions}
            members = members[np.isin(members[:, 0], list(ours))]
            seen_by = {p: k for p, k in seen_by.items() if p in ours}
            seen = sum(seen_by.values())
        over = max(0, len(members) - self._capacity)
        if over and self._policy == "fifo":
            members = members[over:]
        elif over:
            members = members[np.sort(self._rng.choice(len(members), self._capacity, replace=False))]
        fetched = fetch(members.copy()) if len(members) else {}
        slot = lost = 0
        for p, o in cast(list[list[int]], members.tolist()):
            example = fetched.get((p, o))
            if example is None:
                lost += 1
                continue
            image, mask = self._check_example(example, p, o)
            self._images[slot], self._masks[slot] = image, mask
            self._members[slot] = (p, o)
            slot += 1
        self._len, self._head = slot, 0
        self._seen = max(seen, slot)
        self._seen_by_partition = seen_by
        return RestoreResult(restored=slot, lost=lost, over_capacity=over)

    def _check_example(self, example: Example, partition: int, offset: int) -> Example:
        image, mask = np.asarray(example[0]), np.asarray(example[1])
        s = self._size
        if image.shape != (s, s, 3) or mask.reshape(-1).size != s * s or image.dtype != np.uint8 \
                or mask.dtype != np.uint8:
            msg = (f"replay fetch returned image {image.shape} {image.dtype} and mask {mask.shape} {mask.dtype} "
                   f"for partition {partition} offset {offset}; expected uint8 ({s}, {s}, 3) and ({s}, {s}, 1)")
            raise ValueError(msg)
        return image, mask.reshape(s, s, 1)

    def _check_batch(self, images: U8, masks: U8, partitions: npt.ArrayLike,
                     offsets: npt.ArrayLike) -> tuple[U8, U8, I64, I64]:
        images, masks = np.asarray(images), np.asarray(masks)
        parts = np.asarray(partitions, dtype=np.int64).reshape(-1)
        offs = np.asarray(offsets, dtype=np.int64).reshape(-1)
        n, s = len(parts), self._size
        if masks.ndim == 3:
            masks = masks[..., None]
        if images.shape != (n, s, s, 3) or masks.shape != (n, s, s, 1) or len(offs) != n:
            msg = (f"replay add got images {images.shape}, masks {masks.shape}, {n} partitions and "
                   f"{len(offs)} offsets; expected ({n}, {s}, {s}, 3), ({n}, {s}, {s}, 1), n and n")
            raise ValueError(msg)
        if images.dtype != np.uint8 or masks.dtype != np.uint8:
            msg = f"replay add takes uint8 images and masks, got {images.dtype} and {masks.dtype}"
            raise TypeError(msg)
        if n and int(masks.max()) > MAX_CLASS:
            msg = f"replay add takes masks with classes 0..{MAX_CLASS}, got a {int(masks.max())} (a trimap value?)"
            raise ValueError(msg)
        return images, masks, parts, offs


def merge_states(states: Sequence[Mapping[str, Any]]) -> ReplayState:
    """One state holding the members of several workers' states (same policy), for each new
    worker to ``restore(merged, fetch, partitions=its own)``.

    Per-partition counts add up; a member listed twice is kept once. fifo members are
    interleaved by age, newest last, so that a store too small for all of them keeps every
    worker's newest. reservoir members are concatenated: a partition's members are a uniform
    sample of that partition's stream, and a union over workers is uniform when the workers kept
    the same share of what they saw (equal capacity per traffic, the usual even split of
    partitions); otherwise the partitions of the busier worker are under-represented until the
    reservoir turns over.
    """
    if not states:
        msg = "merge_states needs at least one state"
        raise ValueError(msg)
    policies = {str(s["policy"]) for s in states}
    if len(policies) != 1 or any(s.get("version") != STATE_VERSION for s in states):
        msg = f"cannot merge replay states of policies {sorted(policies)} / versions other than {STATE_VERSION}"
        raise ValueError(msg)
    (policy,) = policies
    lists = [np.asarray(s["members"], dtype=np.int64).reshape(-1, 2) for s in states]
    members = np.concatenate(lists)
    if policy == "fifo":
        age = np.concatenate([np.arange(len(m))[::-1] for m in lists])  # 0 = a worker's newest
        members = members[np.argsort(-age, kind="stable")]
    if len(members):
        _, first = np.unique(members, axis=0, return_index=True)
        members = members[np.sort(first)]
    seen_by: dict[int, int] = {}
    for s in states:
        for p, k in s["seen_by_partition"]:
            seen_by[int(p)] = seen_by.get(int(p), 0) + int(k)
    return ReplayState(
        version=STATE_VERSION,
        policy=policy,
        capacity=sum(int(s["capacity"]) for s in states),
        seen=sum(int(s["seen"]) for s in states),
        seen_by_partition=[[p, k] for p, k in sorted(seen_by.items())],
        members=cast(list[list[int]], members.tolist()),
        rng=dict(states[0]["rng"]),
    )
