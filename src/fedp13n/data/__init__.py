"""Federated data: the compact ClientData type, loaders for EMNIST-62, synthetic writers."""

from fedp13n.data.client_data import ClientData, ClientDataset
from fedp13n.data.datasets import DATASET_NAMES, load_dataset
from fedp13n.data.split import split_clients
from fedp13n.data.synthetic import make_synthetic_emnist
from fedp13n.data.validate import DataError, DataFormatError

__all__ = [
    "DATASET_NAMES",
    "ClientData",
    "ClientDataset",
    "DataError",
    "DataFormatError",
    "load_dataset",
    "make_synthetic_emnist",
    "split_clients",
]
