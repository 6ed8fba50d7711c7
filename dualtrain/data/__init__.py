"""Backend-neutral data sources, splits and batch order."""

from dualtrain.data.dataset import (
    ArrayDataset,
    DataInfo,
    DataSplits,
    SourceData,
    load_data,
    stratified_indices,
    stratified_split,
)
from dualtrain.data.rows import NpyRows, Rows, moments

__all__ = [
    "ArrayDataset",
    "DataInfo",
    "DataSplits",
    "NpyRows",
    "Rows",
    "SourceData",
    "load_data",
    "moments",
    "stratified_indices",
    "stratified_split",
]
