"""Federated data: the compact ClientData type, loaders for EMNIST-62, synthetic writers,
partitioners of a centralized labelled data set.

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import by_module, lazy_exports

_EXPORTS = by_module(
    {
        "fedp13n.data.client_data": "ClientData ClientDataset",
        "fedp13n.data.datasets": "DATASET_NAMES load_dataset",
        "fedp13n.data.validate": "DataError DataFormatError",
        "fedp13n.data.synthetic": "make_synthetic_emnist",
        "fedp13n.data.partition": "partition",
        "fedp13n.data.split": "split_clients",
    }
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
