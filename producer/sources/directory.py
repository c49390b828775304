"""``producer.source.kind: dir``: a folder in the Oxford-IIIT Pet layout.

    <path>/images/<name>.jpg
    <path>/annotations/trimaps/<name>.png      (1 = pet, 2 = background, 3 = border)
    <path>/annotations/trainval.txt, test.txt  (optional split lists, first column = name)

The real dataset has a few surprises: some ``.jpg`` files are PNG or CMYK JPEG (sent as they
are: the trainer decodes both), and a handful of files are corrupt. Bad items are skipped with a
warning and counted, once per run; nothing here raises for one bad file.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from producer.sources import MISSING_TRIMAP, UNREADABLE, Skip, pass_order
from stream_trainer.config import ProducerSourceConfig
from stream_trainer.errors import ConfigError
from stream_trainer.wire import PetRecord

log = logging.getLogger(__name__)

SOURCE = "oxford-iiit-pet"
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hashed_split(name: str, eval_fraction: float) -> str:
    """A stable split from the name alone (crc32, not Python's salted hash), when no lists exist."""
    return "test" if zlib.crc32(name.encode()) / 2**32 < eval_fraction else "train"


def read_split_lists(annotations: Path) -> dict[str, str]:
    """name -> split from trainval.txt ("train") and test.txt ("test"); empty when both are absent."""
    splits: dict[str, str] = {}
    for filename, split in (("trainval.txt", "train"), ("test.txt", "test")):
        path = annotations / filename
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                splits[fields[0]] = split
    return splits


def _check_image(data: bytes) -> str:
    """'' if ``data`` is a whole, decodable JPEG or PNG; otherwise why not."""
    if not data.startswith((_JPEG_MAGIC, _PNG_MAGIC)):
        return "not a JPEG or PNG file"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a full decode: verify() alone misses truncated JPEGs
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        return f"cannot decode ({exc})"
    return ""


def _load_trimap(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """The trimap as an 8-bit single-channel PNG and its size; ValueError if it cannot be one."""
    if not data.startswith(_PNG_MAGIC):
        msg = "trimap is not a PNG file"
        raise ValueError(msg)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode == "L":
            return data, img.size
        if img.mode != "P":
            msg = f"trimap has mode {img.mode}, expected 8-bit single-channel"
            raise ValueError(msg)
        # A palette PNG stores the class values as indices; re-encode them as plain gray levels.
        buf = io.BytesIO()
        Image.fromarray(np.asarray(img, dtype=np.uint8), "L").save(buf, format="PNG")
        return buf.getvalue(), img.size


class DirectorySource:
    """Replays an Oxford-IIIT Pet style folder; the file list is read once, at construction."""

    def __init__(self, config: ProducerSourceConfig) -> None:
        self.config = config
        root = Path(config.path)
        images = root / "images"
        if not config.path or not images.is_dir():
            msg = (f"config key 'producer.source.path' must name a folder holding images/ and "
                   f"annotations/trimaps/ (Oxford-IIIT Pet layout), got {config.path!r}")
            raise ConfigError(msg)
        self.trimaps = root / "annotations" / "trimaps"
        if not self.trimaps.is_dir():
            # Without trimaps every image would be skipped, one warning each, and the run would
            # "succeed" having sent nothing: refuse up front instead.
            missing = "annotations/" if not (root / "annotations").is_dir() else "annotations/trimaps/"
            msg = (f"config key 'producer.source.path': {config.path} has images/ but no {missing} folder; "
                   f"the trimaps belong in annotations/trimaps/<name>.png (Oxford-IIIT Pet layout: unpack "
                   f"annotations.tar.gz next to images/)")
            raise ConfigError(msg)
        self.splits = read_split_lists(root / "annotations")
        self.images = sorted(p for p in images.iterdir()
                             if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith("."))
        self._reported: set[str] = set()  # names already skipped: report each once per run
        self._verified: set[str] = set()  # names whose files decoded once: skip the decode next pass

    def split_of(self, name: str) -> str:
        if self.splits:
            split = self.splits.get(name)
            if split is not None:
                return split
        return hashed_split(name, self.config.eval_fraction)

    def iterate(self, pass_index: int, shuffle: bool, include_test: bool) -> Iterator[PetRecord | Skip]:
        for index in pass_order(len(self.images), self.config.seed, pass_index, shuffle):
            path = self.images[index]
            name = path.stem
            if name in self._reported:
                continue
            split = self.split_of(name)
            if split == "test" and not include_test:
                continue
            item = self._load(path, name, split)
            if isinstance(item, Skip):
                self._reported.add(name)
                log.warning("skipping %s: %s", path, item.detail)
            yield item

    def _load(self, path: Path, name: str, split: str) -> PetRecord | Skip:
        trimap_path = self.trimaps / f"{name}.png"
        if not trimap_path.is_file():
            return Skip(name, MISSING_TRIMAP, f"no trimap at {trimap_path}")
        try:
            image = path.read_bytes()
            trimap = trimap_path.read_bytes()
        except OSError as exc:
            return Skip(name, UNREADABLE, f"cannot read: {exc.strerror}")
        if name not in self._verified:
            problem = _check_image(image)
            if problem:
                return Skip(name, UNREADABLE, f"image {problem}")
        try:
            mask, mask_size = _load_trimap(trimap)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            return Skip(name, UNREADABLE, f"trimap {trimap_path}: {exc}")
        if name not in self._verified:
            with Image.open(io.BytesIO(image)) as img:
                if img.size != mask_size:
                    return Skip(name, UNREADABLE, f"image is {img.size}, trimap is {mask_size}")
            self._verified.add(name)
        return PetRecord(image_id=name, image=image, mask=mask, split=split, source=SOURCE)
