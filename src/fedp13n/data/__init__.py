"""Federated data: the compact ClientData type, loaders for EMNIST-62, synthetic writers."""

from fedp13n.data.client_data import ClientData, ClientDataset
from fedp13n.data.split import split_clients
from fedp13n.data.synthetic import make_synthetic_emnist

__all__ = ["ClientData", "ClientDataset", "make_synthetic_emnist", "split_clients"]
