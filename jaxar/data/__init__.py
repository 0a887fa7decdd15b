"""Data sources and the input pipeline (`jaxar.data.pipeline`)."""

from jaxar.data.pipeline import (
    Split,
    TrainIterator,
    create_datasets,
    eval_batch_size,
    eval_batches,
    load_splits,
)
from jaxar.data.sources import ArraySource

__all__ = [
    "ArraySource",
    "Split",
    "TrainIterator",
    "create_datasets",
    "eval_batch_size",
    "eval_batches",
    "load_splits",
]
