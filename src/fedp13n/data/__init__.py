"""Federated data: the compact ClientData type, loaders for EMNIST-62, synthetic writers,
partitioners of a centralized labelled data set.

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import lazy_exports

_EXPORTS = {
    "ClientData": "fedp13n.data.client_data",
    "ClientDataset": "fedp13n.data.client_data",
    "DATASET_NAMES": "fedp13n.data.datasets",
    "DataError": "fedp13n.data.validate",
    "DataFormatError": "fedp13n.data.validate",
    "load_dataset": "fedp13n.data.datasets",
    "make_synthetic_emnist": "fedp13n.data.synthetic",
    "partition": "fedp13n.data.partition",
    "split_clients": "fedp13n.data.split",
}
__all__ = [
    "ClientData",
    "ClientDataset",
    "DATASET_NAMES",
    "DataError",
    "DataFormatError",
    "load_dataset",
    "make_synthetic_emnist",
    "partition",
    "split_clients",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
