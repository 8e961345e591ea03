"""The tiny local task's documents, read from the JSONL beside this file (no download, no
datasets cache): lm-eval calls `load` through `custom_dataset: !function utils.load`."""

import json
import pathlib

import datasets


def load(**_metadata):
    """{"test": the four documents}; lm-eval passes the task's metadata as keywords."""
    lines = (pathlib.Path(__file__).parent / "tiny.jsonl").read_text(encoding="utf-8").splitlines()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([json.loads(s) for s in lines])})
