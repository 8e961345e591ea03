"""A TFDS builder for plain text, prepared offline into ArrayRecord (no TensorFlow needed).

    python -m blt_jax.pipeline.tfds_text --data_dir ~/tfds --train 'corpus/*.txt' --validation 'val/*.txt'

then train with `--config.data.source=tfds --config.data.tfds_name=blt_text
--config.data.tfds_data_dir=~/tfds`. Public corpora (c4, wiki40b, pg19) are prepared the same way
on a machine with network access (see the README), and read with `tfds.data_source`.
"""

from __future__ import annotations

import argparse
import glob
from typing import Any, Iterator

import tensorflow_datasets as tfds

from blt_jax.errors import UserError

SPLIT_FILES: dict[str, list[str]] = {}


class BltText(tfds.core.GeneratorBasedBuilder):
    """One example per file: {"text": its UTF-8 text}."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
        return {split: self._generate_examples(files) for split, files in SPLIT_FILES.items()}

    def _generate_examples(self, files: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
        for path in files:
            with open(path, "rb") as f:
                yield path, {"text": f.read().decode("utf-8", errors="replace")}


def prepare(data_dir: str, splits: dict[str, str]) -> None:
    """Builds `blt_text` into data_dir from {split: glob}."""
    SPLIT_FILES.clear()
    for split, pattern in splits.items():
        files = sorted(glob.glob(pattern, recursive=True))
        if not files:
            raise UserError(f"tfds: {split} pattern {pattern!r} matches no file")
        SPLIT_FILES[split] = files
    BltText(data_dir=data_dir, file_format="array_record").download_and_prepare()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--validation", required=True)
    a = ap.parse_args()
    prepare(a.data_dir, {"train": a.train, "validation": a.validation})


if __name__ == "__main__":
    main()
