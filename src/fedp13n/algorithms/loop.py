"""The round loop, shared by every training process, with callbacks for everything else.

A *process* is what an algorithm builder returns (:func:`build_weighted_fed_avg` today):
``initialize() -> state``, ``next(state, clients) -> (state, metrics)`` and
``get_model_weights(state)``, with ``state.round_num`` counting finished rounds. The
loop runs rounds until a target round and hands each round's result to callbacks, in
the manner of Keras / Lightning callbacks or Flower's strategy loop: logging, CSV rows,
checkpoints, global evaluation and progress bars are callbacks, never loop code.

A callback may add entries to the round's ``row`` (e.g. a global evaluation adds
``eval_accuracy``); callbacks run in list order, so put those before the ones that
record the row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class TrainingError(RuntimeError):
    """Training cannot learn (every client skipped, non-finite weights); the message says
    what happened and what to change."""


class Callback:
    """Hooks of :func:`run_rounds`; override the ones you need (each does nothing)."""

    def on_train_begin(self, process: Any, state: Any) -> None:
        """Before the first round this call runs (``state.round_num`` rounds are done)."""

    def on_round_end(self, process: Any, state: Any, row: dict[str, Any]) -> None:
        """After round ``state.round_num``; ``row`` is its metrics (``RoundMetrics.as_dict()``)."""

    def on_train_end(self, process: Any, state: Any) -> None:
        """After the last round of this call."""


class LearningGuard(Callback):
    """Stop a run that cannot learn instead of reporting numbers of an unchanged or
    non-finite model: a round where every client's update was skipped as non-finite,
    global weights that are no longer finite, or a global model whose test loss is not
    (when the round evaluated it)."""

    def on_round_end(self, process: Any, state: Any, row: dict[str, Any]) -> None:
        import torch

        r = state.round_num
        if row["num_clients"] == 0 and row["num_skipped_clients"] > 0:
            raise TrainingError(
                f"round {r}: the update of every client ({row['num_skipped_clients']}) was "
                "not finite, so the model cannot learn; lower the client learning rate "
                "(or check the data)."
            )
        bad = [k for k, v in state.model.items() if v.is_floating_point() and
               not bool(torch.isfinite(v).all())]  # fmt: skip
        if bad:
            raise TrainingError(
                f"round {r}: the global weights {bad[:3]} are no longer finite; lower the "
                "server learning rate."
            )
        eval_loss = row.get("eval_loss")
        if isinstance(eval_loss, float) and not math.isfinite(eval_loss):
            raise TrainingError(
                f"round {r}: the global model's test loss is {eval_loss} (its weights are finite "
                "but have blown up), so it cannot be evaluated; lower the server learning rate."
            )


@dataclass
class TrainingResult:
    """The final state and the rows of the rounds run by this call."""

    state: Any
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_rounds(
    process: Any,
    state: Any,
    until_round: int,
    select_clients: Callable[[int], Any],
    callbacks: Sequence[Callback] = (),
) -> TrainingResult:
    """Run rounds ``state.round_num + 1 .. until_round``; ``select_clients(round_num)`` gives
    each round's clients (what ``process.next`` takes)."""
    for cb in callbacks:
        cb.on_train_begin(process, state)
    result = TrainingResult(state)
    while state.round_num < until_round:
        state, metrics = process.next(state, select_clients(state.round_num + 1))
        row = metrics.as_dict()
        for cb in callbacks:
            cb.on_round_end(process, state, row)
        result.rows.append(row)
    result.state = state
    for cb in callbacks:
        cb.on_train_end(process, state)
    return result


def fresh_server_state(process: Any, weights: dict[str, Any], round_num: int) -> Any:
    """A state holding ``weights`` after ``round_num`` rounds with a new server optimizer:
    how a training stage starts from the weights the previous stage left."""
    state = process.initialize()
    model = {k: v.detach().clone() for k, v in weights.items()}
    return dataclasses.replace(state, round_num=round_num, model=model)
