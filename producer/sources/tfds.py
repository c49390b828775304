"""``producer.source.kind: tfds``: the ``oxford_iiit_pet`` dataset from tensorflow-datasets.

Optional: install the ``tfds`` extra and download the dataset first (``tfds build
oxford_iiit_pet`` or one ``tfds.load`` with downloads allowed). This source never downloads: a
producer that silently fetches 800 MB on start is a surprise nobody wants in a container.
``producer.source.path`` is the tfds data_dir (empty = tfds's default, ~/tensorflow_datasets).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from stream_trainer.config import ProducerSourceConfig
from stream_trainer.errors import ConfigError
from stream_trainer.wire import PetRecord

DATASET = "oxford_iiit_pet"
SOURCE = "tfds:oxford_iiit_pet"
# tfds splits -> wire splits; the dataset's own train/test split is the official trainval/test.
_SPLITS = {"train": "train", "test": "test"}
_SHUFFLE_BUFFER = 512


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        msg = (f"producer.source.kind is 'tfds' but tensorflow_datasets is not installed ({exc}); "
               f"install it with pip install 'stream-trainer[tfds]' or use kind synthetic or dir")
        raise ConfigError(msg) from exc
    return tfds


class TfdsSource:
    """Streams tfds examples, re-encoding the decoded image as JPEG and the mask as PNG."""

    def __init__(self, config: ProducerSourceConfig) -> None:
        self.config = config
        self.tfds = _import_tfds()
        self.data_dir = config.path or None
        try:
            self.builder = self.tfds.builder(DATASET, data_dir=self.data_dir)
            prepared = self.builder.is_prepared()
        except Exception as exc:  # tfds raises many types; all mean "not usable"
            msg = f"tensorflow_datasets cannot open {DATASET}: {exc}"
            raise ConfigError(msg) from exc
        if not prepared:
            msg = (f"tensorflow_datasets dataset {DATASET} is not downloaded in "
                   f"{self.data_dir or 'the default data_dir'}; run `tfds build {DATASET}` first "
                   f"or set producer.source.path to the data_dir holding it")
            raise ConfigError(msg)

    def iterate(self, pass_index: int, shuffle: bool, include_test: bool) -> Iterator[PetRecord]:
        c = self.config
        for tfds_split, split in _SPLITS.items():
            if split == "test" and not include_test:
                continue
            ds = self.builder.as_dataset(split=tfds_split, shuffle_files=shuffle,
                                         read_config=self.tfds.ReadConfig(shuffle_seed=c.seed + pass_index))
            if shuffle:
                ds = ds.shuffle(_SHUFFLE_BUFFER, seed=c.seed + pass_index)
            for ex in self.tfds.as_numpy(ds):
                yield PetRecord(
                    image_id=_name(ex),
                    image=_jpeg(ex["image"], c.jpeg_quality),
                    mask=_png(ex["segmentation_mask"]),
                    split=split,
                    source=SOURCE,
                )


def _name(ex: dict[str, Any]) -> str:
    name = ex.get("file_name", b"")
    text = name.decode() if isinstance(name, bytes) else str(name)
    return text.rsplit(".", 1)[0]


def _jpeg(image: npt.NDArray[np.uint8], quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(mask: npt.NDArray[np.uint8]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=np.uint8).reshape(mask.shape[0], mask.shape[1]), "L").save(buf, format="PNG")
    return buf.getvalue()
