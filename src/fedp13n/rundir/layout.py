"""The layout of a run directory: what ``fedp13n run`` writes and ``fedp13n report`` reads.

One place for the file names and table columns so the writer and the readers cannot
drift apart. Everything is plain text (TOML, CSV, JSON) except the weights, which are
torch tensors saved so that they load with ``torch.load(weights_only=True)`` (no
arbitrary unpickling).
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.toml"  # the resolved configuration of the run
FEDAVG_METRICS = "fedavg_metrics.csv"  # one row per FedAvg round
GLOBAL_WEIGHTS = "global_weights.pt"  # final global model state_dict
CHECKPOINTS = "checkpoints"  # checkpoints/round_000010.pt ...
PERSONALIZATION = "personalization.json"  # full nested result (see below)
PER_CLIENT = "per_client.csv"  # one row per client x strategy x evaluation epoch
SUMMARY = "summary.json"  # headline numbers, per strategy/epoch statistics
CLIENT_STATE = "client_state"  # per-client state of a stateful method (fedp13n.state)
#: one row per client x protocol of the "own state" evaluation (a stateful method's runs only)
OWN_STATE_PER_CLIENT = "per_client_own_state.csv"
SPLIT = "split.json"  # the FedAvg / validation / personalization client ids
TUNING = "tuning.json"  # tuned strategies: candidates, validation accuracy, the choice
REPORT = "report.html"  # written by fedp13n report
#: results of a finished run set aside when --resume extends it (previous/rounds_20/...)
PREVIOUS = "previous"
#: a run's final results: set aside together (summary.json first: it marks a run finished)
FINAL_RESULTS = (
    SUMMARY,
    REPORT,
    PER_CLIENT,
    OWN_STATE_PER_CLIENT,
    PERSONALIZATION,
    TUNING,
    GLOBAL_WEIGHTS,
)

#: Columns of FEDAVG_METRICS. ``eval_loss``/``eval_accuracy`` (global model on held-out
#: data) and ``p13n_accuracy`` (mean accuracy after the first strategy's fine-tuning, on
#: the evaluation clients, with ``p13n_eval_every``) are empty where not measured.
FEDAVG_COLUMNS = (
    "round",
    "loss",
    "accuracy",
    "num_examples",
    "num_clients",
    "num_skipped_clients",
    "seconds",
    "examples_per_second",
    "eval_loss",
    "eval_accuracy",
    "p13n_accuracy",
)

#: Columns of PER_CLIENT. ``epoch`` is the key of the strategy's metrics ("epoch_1", ...);
#: ``baseline_*`` are the global model's numbers on the same client's test data.
PER_CLIENT_COLUMNS = (
    "client_id",
    "num_train_examples",
    "num_test_examples",
    "strategy",
    "epoch",
    "loss",
    "accuracy",
    "baseline_loss",
    "baseline_accuracy",
)

#: Columns of OWN_STATE_PER_CLIENT; ``protocol`` is one of OWN_STATE_PROTOCOLS.
OWN_STATE_COLUMNS = (
    "protocol",
    "client_id",
    "num_train_examples",
    "num_test_examples",
    "loss",
    "accuracy",
)
#: The evaluation protocols besides TFF's, for methods that keep state per client
#: (fedp13n.algorithms.own_state), each in one sentence (the report's and summary.json's).
OWN_STATE_PROTOCOLS = {
    "own_state": "training clients, each evaluated on its own test data with the global "
    "shared layers and its own stored state (FL-bench / PFLlib's protocol)",
    "new_clients": "held-out clients, each running the method's local step once on its "
    "train data (from the global model, with the stage's optimizer, learning rate, epochs "
    "and batch size), then evaluated on its test data",
}
#: TFF's protocol (per_client.csv), in one sentence, beside the others in the report.
TFF_PROTOCOL = (
    "held-out clients personalize the trained global model with each strategy and are "
    "evaluated on their test data (TFF's protocol)"
)

#: The key of the global model's metrics in PERSONALIZATION (TFF's name).
BASELINE_KEY = "baseline_metrics"
#: Keys PERSONALIZATION holds next to the metrics.
META_KEYS = ("client_ids", "seed")
#: Names no strategy may have.
RESERVED_KEYS = (BASELINE_KEY, *META_KEYS)

# PERSONALIZATION holds {"client_ids": [...], "baseline_metrics": {...},
# "<strategy>": {"epoch_1": {"loss": [...], "accuracy": [...], "num_test_examples": [...]},
#                ..., "num_train_examples": [...]}}: every leaf a list, position i = client i.


def checkpoint_path(run_dir: Path, round_num: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"round_{round_num:06d}.pt"
