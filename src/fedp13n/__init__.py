"""fedp13n: federated personalization in PyTorch.

Train a global model with weighted Federated Averaging, then measure client by client how
well personalization strategies adapt it (TFF's personalization experiment on EMNIST-62;
Jiang et al. 2019, "Improving Federated Learning Personalization via Model Agnostic Meta
Learning").
"""

from fedp13n.data import ClientData, ClientDataset
from fedp13n.execution import Executor, InProcessExecutor

__version__ = "0.1.0"

__all__ = ["ClientData", "ClientDataset", "Executor", "InProcessExecutor", "__version__"]
