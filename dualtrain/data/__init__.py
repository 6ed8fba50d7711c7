"""Backend-neutral data sources, splits and batch order."""

from dualtrain.data.batches import BatchSplit
from dualtrain.data.dataset import (
    ArrayDataset,
    ArraySpec,
    DataInfo,
    DataSplits,
    SourceData,
    load_data,
    random_indices,
    stratified_indices,
    stratified_split,
)
from dualtrain.data.rows import NpyRows, Rows, moments

__all__ = [
    "ArrayDataset",
    "ArraySpec",
    "BatchSplit",
    "DataInfo",
    "DataSplits",
    "NpyRows",
    "Rows",
    "SourceData",
    "load_data",
    "moments",
    "random_indices",
    "stratified_indices",
    "stratified_split",
]
