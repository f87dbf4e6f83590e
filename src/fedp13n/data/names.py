"""Names of the data sources ``load_dataset`` knows (torch-free, for configs and the CLI)."""

DATASET_NAMES = (
    "emnist", "emnist-sqlite", "leaf", "synthetic", "shakespeare", "shakespeare-leaf",
)  # fmt: skip
