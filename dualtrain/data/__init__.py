"""Backend-neutral data sources, splits and batch order."""

from dualtrain.data.dataset import ArrayDataset, DataInfo, DataSplits, load_data, stratified_split

__all__ = ["ArrayDataset", "DataInfo", "DataSplits", "load_data", "stratified_split"]
