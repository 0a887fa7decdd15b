"""Data sources and the input pipeline (`jaxar.data.pipeline`)."""

from jaxar.data.pipeline import (
    ReadAhead,
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
    "ReadAhead",
    "Split",
    "TrainIterator",
    "create_datasets",
    "eval_batch_size",
    "eval_batches",
    "load_splits",
]
