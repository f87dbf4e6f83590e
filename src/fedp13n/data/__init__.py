"""Federated data: the compact ClientData type, loaders for EMNIST-62, synthetic writers."""

from fedp13n.data.client_data import ClientData, ClientDataset

__all__ = ["ClientData", "ClientDataset"]
