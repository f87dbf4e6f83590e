"""Tasks by name: a task is a data set, its models, a loss and an accuracy, named once.

What configs and the command line call ``task`` (torch-free: names and import paths
only; :mod:`fedp13n.tasks.build` imports them on use). A task's ``dataset`` setting
picks one of its data sources and ``model`` one of its models; either may instead be a
researcher's own ``"module:function"`` (then the task still gives the loss and the
accuracy, and its data checks do not apply to the other data).

Adding a task is one entry in :data:`TASKS` (its models in
:data:`fedp13n.models.registry.MODELS`) and an adapter module with its ``loader``,
``num_classes`` and ``notice`` (see :mod:`fedp13n.tasks.shakespeare`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """One task. Every ``"module:function"`` here is imported on use.

    Attributes:
        name: the task's name (its key in :data:`TASKS`).
        description: one line for people.
        datasets: the data sources of the task's own loader; the first is the default.
        models: names in :data:`fedp13n.models.registry.MODELS`; the first is the default.
        loader: ``(source, **settings) -> (train, test)`` ClientData of the task's own
            data; called with the settings its signature names among ``data_dir``,
            ``cache_dir``, ``only_digits``, ``synthetic_clients``, ``seed``, ``progress``.
        num_classes: ``(**settings) -> int``, the classes (outputs) a model is built with
            for the task's own data (same settings rule).
        loss: ``(outputs, targets) -> batch mean``.
        ignore_ids: target ids the accuracy leaves out of the count, or
            ``"module:NAME"`` of such a tuple.
        notice: ``(source, **settings) -> str | None``, a line to show before the data
            loads (e.g. what will be downloaded), or None.
    """

    name: str
    description: str
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    loader: str
    num_classes: str
    loss: str = "torch.nn.functional:cross_entropy"
    ignore_ids: tuple[int, ...] | str = ()
    notice: str | None = None


#: Task name -> its spec. The first is the default task.
TASKS: dict[str, TaskSpec] = {
    "emnist": TaskSpec(
        name="emnist",
        description="federated EMNIST-62 (or EMNIST-10 with only_digits), TFF's",
        datasets=("emnist", "emnist-sqlite", "leaf", "synthetic"),
        models=("conv_dropout", "fedavg_cnn", "conv_bn", "dnn", "dnn_bn"),
        loader="fedp13n.tasks.emnist:load",
        num_classes="fedp13n.tasks.emnist:num_classes",
        notice="fedp13n.tasks.emnist:notice",
    ),
    "shakespeare": TaskSpec(
        name="shakespeare",
        description="TFF's federated Shakespeare next-character prediction",
        datasets=("shakespeare", "shakespeare-leaf"),
        models=("shakespeare_rnn", "shakespeare_rnn_bn"),
        loader="fedp13n.tasks.shakespeare:load",
        num_classes="fedp13n.tasks.shakespeare:num_classes",
        ignore_ids="fedp13n.tasks.shakespeare:ACCURACY_IGNORED_IDS",  # TFF: the pad id only
        notice="fedp13n.tasks.shakespeare:notice",
    ),
}
TASK_NAMES = tuple(TASKS)
DEFAULT_TASK = TASK_NAMES[0]


def get_task(name: str) -> TaskSpec:
    """The task registered under ``name`` (a ``ValueError`` naming the known ones)."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; choose one of {list(TASKS)}.") from None


def sources_text() -> str:
    """Every task's data sources, for help texts: ``emnist: emnist, leaf, ...``."""
    return "; ".join(f"{t.name}: {', '.join(t.datasets)}" for t in TASKS.values())


def models_text() -> str:
    """Every task's models, for help texts."""
    return "; ".join(f"{t.name}: {', '.join(t.models)}" for t in TASKS.values())
