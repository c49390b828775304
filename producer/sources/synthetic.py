"""Synthetic pet-like scenes with Oxford-IIIT Pet style trimaps, for demos, tests and benchmarks.

Each image is a noisy, shaded background in a muted cool colour with one to three wobbly
ellipse "pets" in a warm, saturated, striped colour family, so a small U-Net can tell them apart
within a few hundred steps. The trimap marks pets 1, background 2 and a band a few pixels wide
around each pet's edge 3, exactly like the real dataset.

Image ``i`` depends only on ``(seed, i)``: the same seed gives identical bytes, and any index can
be regenerated on its own (``make_record``).

Drift (``producer.source.phases``): each phase has its own look (pet shape, pet colour, background
colour and texture) and its own images, which depend only on ``(seed, phase name, i)``, so adding,
removing or reordering other phases leaves a phase's bytes unchanged. A pass sends the phases in
order, each phase's train images in a seeded order of their own; passes > 1 cycle back to the first
phase. The eval images of every phase go to the one eval topic at the start of the first pass,
before any train image, so an evaluator that starts with the stream can already score the phases
it has not trained on; every record's ``source`` is ``synthetic:phase=NAME``, which is how a
consumer selects one phase (``wire.phase_of``). Looks are chosen to conflict, not just to differ:
the default phase's pets are warm on a cool background, a ``cool`` pet on a ``warm-stripes``
background inverts both the colour and the texture cue, so a model trained only on the second
phase forgets the first instead of quietly serving both.

Message size: per-pixel noise dominates the JPEG size, about 0.5 bytes per pixel at
``jpeg_quality=90``. ``min_size=max_size=320`` gives ~51 KB JPEGs and ~54 KB messages (the
benchmark's 50-60 KB target; 300 px gives ~49 KB messages); the default 160-320 px averages
~30 KB. Generation runs at roughly 200-300 images/s on one core at these sizes.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from producer.sources import pass_order
from stream_trainer.config import ProducerSourceConfig, SyntheticPhaseConfig
from stream_trainer.wire import BACKGROUND, BORDER, PET, PHASE_TAG, PetRecord

SOURCE = "synthetic"
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
Range = tuple[float, float]

# (hue, saturation, value) ranges. Pets are saturated in every family. The cool background is the
# phase-less look (muted); the warm one is about as saturated as a pet, so that saturation alone
# cannot tell pet from background in every phase either.
_PET_HSV: dict[str, tuple[Range, Range, Range]] = {
    "warm": ((-0.03, 0.12), (0.55, 0.95), (0.55, 1.0)),
    "cool": ((0.52, 0.68), (0.55, 0.95), (0.55, 1.0)),
    "green": ((0.24, 0.40), (0.55, 0.95), (0.45, 0.9)),
}
_BACKGROUND_HSV: dict[str, tuple[Range, Range, Range]] = {
    "cool": ((0.3, 0.75), (0.05, 0.35), (0.35, 0.8)),
    "warm": ((-0.05, 0.12), (0.35, 0.75), (0.45, 0.9)),
}
# Half-axis a (share of the short side) and aspect b/a. Boxes and stars are drawn a little smaller
# because their corners and points reach further out than a blob's rim.
_SHAPE_SIZE: dict[str, tuple[Range, Range]] = {
    "blob": ((0.15, 0.35), (0.55, 1.0)),
    "box": ((0.13, 0.28), (0.55, 1.0)),
    "star": ((0.14, 0.26), (0.8, 1.0)),
}


@dataclass(frozen=True)
class Look:
    """How a scene is drawn; ``Look()`` is the phase-less look (every existing seed's bytes)."""

    shape: str = "blob"
    pet_colour: str = "warm"
    background: str = "cool-noise"

    @classmethod
    def of(cls, phase: SyntheticPhaseConfig) -> Look:
        return cls(phase.shape, phase.pet_colour, phase.background)


def split_of(index: int, eval_fraction: float) -> str:
    """'test' for an evenly spaced ``eval_fraction`` of indices, else 'train' (no randomness)."""
    # floor((i+1)f) > floor(i f) is true for exactly round(n f) of the first n indices, spread evenly.
    return "test" if int((index + 1) * eval_fraction) > int(index * eval_fraction) else "train"


def _hsv_to_rgb(h: float, s: float, v: float) -> F32:
    """One HSV colour (all in [0, 1]) as float RGB in [0, 255]."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255


def _colour(rng: np.random.Generator, hsv: tuple[Range, Range, Range]) -> F32:
    (h0, h1), (s0, s1), (v0, v1) = hsv
    return _hsv_to_rgb(rng.uniform(h0, h1) % 1.0, rng.uniform(s0, s1), rng.uniform(v0, v1))


def _signed_distance(rng: np.random.Generator, yy: F32, xx: F32, w: int, h: int,
                     margin: float, shape: str = "blob") -> tuple[tuple[slice, slice], F32]:
    """One random pet outline: its bounding box and the signed pixel distance inside it.

    Negative inside the pet. Only the box (grown by ``margin``) is computed, which keeps a
    320 px scene at a few milliseconds. ``blob`` is a wobbly ellipse, ``box`` a rotated
    rectangle, ``star`` an ellipse with four to six deep points.
    """
    short = min(w, h)
    (a0, a1), (b0, b1) = _SHAPE_SIZE[shape]
    a = rng.uniform(a0, a1) * short
    b = a * rng.uniform(b0, b1)
    cx = rng.uniform(0.3, 0.7) * w
    cy = rng.uniform(0.3, 0.7) * h
    theta = rng.uniform(0, np.pi)
    if shape == "box":
        ks: tuple[int, ...] = ()
        amps = phases = np.zeros(0)
        extent = float(np.hypot(a, b))  # the corners
    elif shape == "star":
        ks = (int(rng.integers(4, 7)),)
        amps = rng.uniform(0.3, 0.45, size=1)
        phases = rng.uniform(0, 2 * np.pi, size=1)
        extent = a * (1 + amps.sum())
    else:
        ks = (2, 3, 5)
        amps = rng.uniform(0.0, 0.12, size=3)
        phases = rng.uniform(0, 2 * np.pi, size=3)
        extent = a * (1 + amps.sum())
    reach = extent + margin + 2  # no point of the pet or its band lies further out
    box = (slice(max(0, int(cy - reach)), min(h, int(cy + reach) + 1)),
           slice(max(0, int(cx - reach)), min(w, int(cx + reach) + 1)))
    dx, dy = xx[box[1]][None, :] - cx, yy[box[0]][:, None] - cy
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u = dx * cos + dy * sin
    v = dy * cos - dx * sin
    if shape == "box":
        # Exact: the distance to the nearest point outside, minus the distance to the nearest side inside.
        qu, qv = np.abs(u) - np.float32(a), np.abs(v) - np.float32(b)
        outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
        return box, (outside + np.minimum(np.maximum(qu, qv), 0)).astype(np.float32)
    # A few low angular harmonics turn the ellipse into a blob (ears, a tail, a curled body);
    # one strong one makes a star.
    angle = np.arctan2(v, u)
    wobble = 1.0 + sum(amp * np.sin(k * angle + ph) for k, amp, ph in zip(ks, amps, phases, strict=True))
    f = np.sqrt((u / a) ** 2 + (v / b) ** 2) / wobble - 1.0
    # First-order distance f/|grad f| is accurate near the edge, which is all the border band needs.
    gy, gx = np.gradient(f)
    return box, (f / np.maximum(np.sqrt(gx * gx + gy * gy), 1e-3)).astype(np.float32)


_NOISE_SIDE = 640
_noise_tile: F32 | None = None


def _noise(rng: np.random.Generator, height: int, width: int) -> F32:
    """Gaussian pixel noise (sigma 18), channels first (3, H, W): a random crop of a fixed tile.

    Drawing 300k fresh normals per image would cost more than everything else together; a crop at
    a random offset is just as good a texture and stays deterministic.
    """
    global _noise_tile
    if height > _NOISE_SIDE or width > _NOISE_SIDE:
        return rng.standard_normal((3, height, width), dtype=np.float32) * np.float32(18.0)
    if _noise_tile is None:
        tile = np.random.default_rng(20240917).standard_normal((3, _NOISE_SIDE, _NOISE_SIDE), dtype=np.float32)
        _noise_tile = tile * np.float32(18.0)
    y0 = int(rng.integers(0, _NOISE_SIDE - height + 1))
    x0 = int(rng.integers(0, _NOISE_SIDE - width + 1))
    return _noise_tile[:, y0:y0 + height, x0:x0 + width]


DEFAULT_LOOK = Look()


def render(rng: np.random.Generator, width: int, height: int, look: Look = DEFAULT_LOOK) -> tuple[U8, U8]:
    """Draw one scene: (H, W, 3) uint8 RGB image and (H, W) uint8 trimap with values 1..3."""
    # Channels-first planes: numpy broadcasts over a trailing axis of 3 several times slower.
    yy = np.arange(height, dtype=np.float32)
    xx = np.arange(width, dtype=np.float32)
    band = rng.uniform(1.5, 3.0)  # half-width: a border 3-6 px wide, like the real trimaps

    # Background: one colour family (phase-less: muted cool), a linear gradient, noise, and for
    # "-stripes" broad bands that look like fur to a model that has only seen striped pets.
    family, texture = look.background.split("-")
    bg = _colour(rng, _BACKGROUND_HSV[family])
    gdir, gain = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.6)
    shade = (1.0 + (yy[:, None] / height - 0.5) * np.float32(np.sin(gdir) * gain)
             + (xx[None, :] / width - 0.5) * np.float32(np.cos(gdir) * gain))
    if texture == "stripes":
        period, sdir = rng.uniform(8, 20), rng.uniform(0, np.pi)
        k = np.float32(2 * np.pi / period)
        shade = shade * (1.0 + np.float32(0.3) * np.sin(xx[None, :] * np.float32(np.cos(sdir) * k)
                                                         + yy[:, None] * np.float32(np.sin(sdir) * k)))
    image = np.empty((3, height, width), dtype=np.float32)
    for c in range(3):
        np.multiply(shade, bg[c], out=image[c])

    # Pets: saturated hues of one family (phase-less: red/orange/yellow-brown) with stripes;
    # union = min distance.
    sd = np.full((height, width), np.inf, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        box, d = _signed_distance(rng, yy, xx, width, height, band, look.shape)
        colour = _colour(rng, _PET_HSV[look.pet_colour])
        period, sdir = rng.uniform(5, 14), rng.uniform(0, np.pi)
        k = np.float32(2 * np.pi / period)
        phase = (xx[box[1]][None, :] * np.float32(np.cos(sdir) * k)
                 + yy[box[0]][:, None] * np.float32(np.sin(sdir) * k))
        fur = 1.0 + 0.25 * np.sin(phase)
        inside = d < 0
        for c in range(3):
            plane = image[c][box]
            np.copyto(plane, fur * colour[c], where=inside)
        np.minimum(sd[box], d, out=sd[box])

    # Per-pixel noise everywhere: texture for the network and realistic JPEG sizes.
    image += _noise(rng, height, width)
    np.clip(image, 0, 255, out=image)
    rgb = np.ascontiguousarray(image.astype(np.uint8).transpose(1, 2, 0))

    trimap = np.where(sd < 0, np.uint8(PET), np.uint8(BACKGROUND))
    np.putmask(trimap, np.abs(sd) <= band, np.uint8(BORDER))
    return rgb, trimap


def encode_jpeg(rgb: U8, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(mask: U8) -> bytes:
    """An 8-bit single-channel ('L') PNG of the trimap values."""
    buf = io.BytesIO()
    # compress_level 1: trimaps compress well anyway and level 6 costs ~3x the time.
    Image.fromarray(mask, "L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _phase_key(name: str) -> int:
    # A stable number per name (Python's hash() changes per process): a phase's images then
    # depend on its name, never on its position in the list.
    return zlib.crc32(name.encode())


def make_record(index: int, seed: int = 0, min_size: int = 160, max_size: int = 320,
                jpeg_quality: int = 90, eval_fraction: float = 0.1,
                phase: SyntheticPhaseConfig | None = None) -> PetRecord:
    """The record with index ``index`` of the stream ``generate(seed=seed, ...)`` yields.

    With ``phase``: image ``index`` of that phase, id ``synthetic_NAME_000123``, source
    ``synthetic:phase=NAME``, drawn in the phase's look.
    """
    if phase is None:
        rng = np.random.default_rng([seed, index])
        image_id, source, look = f"synthetic_{index:06d}", SOURCE, Look()
    else:
        rng = np.random.default_rng([seed, _phase_key(phase.name), index])
        image_id, look = f"synthetic_{phase.name}_{index:06d}", Look.of(phase)
        source = f"{SOURCE}{PHASE_TAG}{phase.name}"
    width = int(rng.integers(min_size, max_size + 1))
    height = int(rng.integers(min_size, max_size + 1))
    rgb, trimap = render(rng, width, height, look)
    return PetRecord(
        image_id=image_id,
        image=encode_jpeg(rgb, jpeg_quality),
        mask=encode_png(trimap),
        split=split_of(index, eval_fraction),
        source=source,
    )


def generate(count: int, seed: int = 0, min_size: int = 160, max_size: int = 320, jpeg_quality: int = 90,
             eval_fraction: float = 0.1) -> Iterator[PetRecord]:
    """Yield ``count`` deterministic synthetic records (ids synthetic_000000, ...).

    Width and height are drawn independently from [min_size, max_size]; about ``eval_fraction``
    of the records have split "test", evenly spaced by index.
    """
    for index in range(count):
        yield make_record(index, seed, min_size, max_size, jpeg_quality, eval_fraction)


class SyntheticSource:
    """``producer.source.kind: synthetic``: ``count`` generated images, or the phases in order,
    regenerated each pass."""

    def __init__(self, config: ProducerSourceConfig) -> None:
        self.config = config

    def iterate(self, pass_index: int, shuffle: bool, include_test: bool) -> Iterator[PetRecord]:
        c = self.config
        if c.phases:
            yield from self._phases(pass_index, shuffle, include_test)
            return
        for index in pass_order(c.count, c.seed, pass_index, shuffle):
            # The split is known from the index alone, so unwanted records are never rendered.
            if include_test or split_of(index, c.eval_fraction) == "train":
                yield make_record(index, c.seed, c.min_size, c.max_size, c.jpeg_quality, c.eval_fraction)

    def _phases(self, pass_index: int, shuffle: bool, include_test: bool) -> Iterator[PetRecord]:
        c = self.config

        def record(index: int, phase: SyntheticPhaseConfig) -> PetRecord:
            return make_record(index, c.seed, c.min_size, c.max_size, c.jpeg_quality, c.eval_fraction, phase)

        # Every phase's eval set first: the evaluator reads the eval topic once, when it starts.
        if include_test:
            for phase in c.phases:
                yield from (record(i, phase) for i in range(phase.images) if split_of(i, c.eval_fraction) == "test")
        for phase in c.phases:
            # Shuffled within the phase only: shuffling across phases would erase the drift.
            order = (np.random.default_rng([c.seed, pass_index, _phase_key(phase.name)]).permutation(phase.images)
                     if shuffle else np.arange(phase.images))
            yield from (record(int(i), phase) for i in order if split_of(int(i), c.eval_fraction) == "train")
