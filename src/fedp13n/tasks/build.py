"""What a run builds from a task: its data, its model builder, its loss, and a dry run.

A researcher's own data set is ``dataset = "module:function"``: the function is called
with no arguments and returns ``(train, test)``, each a
:class:`~fedp13n.data.ClientData` or a plain mapping ``{client_id: (x, y)}`` (turned
into one with :meth:`ClientData.from_mapping`, unchecked: any features and labels),
with the same client ids in both. It is loaded afresh at every run (fedp13n caches only
its own downloads). A researcher's own model is ``model = "module:function"`` returning a
``torch.nn.Module``: called with ``num_classes=`` when it has that parameter, else with
no arguments (the same rule as the registered models).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedp13n.data.client_data import ClientData
from fedp13n.data.validate import DataError
from fedp13n.models.objectives import Accuracy, TaskLoss
from fedp13n.tasks.registry import TaskSpec
from fedp13n.utils.imports import is_import_path, resolve_import_path

#: The settings a task's functions may take (by keyword, those their signature names).
SETTINGS = ("data_dir", "cache_dir", "only_digits", "synthetic_clients", "seed", "progress")


def call_with_settings(fn: Callable[..., Any], *args: Any, settings: Mapping[str, Any]) -> Any:
    """``fn(*args, **the settings fn's signature names)`` (all of them with ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return fn(*args, **settings)
    names = {p.name for p in params}
    return fn(*args, **{k: v for k, v in settings.items() if k in names})


# -- data -----------------------------------------------------------------------------------
def load_task_data(
    spec: TaskSpec, source: str, settings: Mapping[str, Any]
) -> tuple[ClientData, ClientData]:
    """The (train, test) ClientData of ``source``: one of the task's data sources, or a
    researcher's ``"module:function"`` (:func:`load_user_data`)."""
    if is_import_path(source):
        return load_user_data(source)
    return call_with_settings(resolve_import_path(spec.loader, "task loader"), source,
                              settings=settings)  # fmt: skip


def load_user_data(path: str) -> tuple[ClientData, ClientData]:
    """Call the dataset function ``path`` names (no arguments) and check what it returns
    (:func:`client_data_pair`); a one-line ``DataError`` for any failure."""
    try:
        fn = resolve_import_path(path, "dataset")
    except ValueError as e:
        raise DataError(str(e)) from None
    if not callable(fn):
        raise DataError(f"dataset {path!r} is a {type(fn).__name__}, not a function.")
    try:
        result = fn()
    except Exception as e:  # the researcher's function fails in its own way
        raise DataError(
            f"dataset {path!r} raised {_exception_text(e)}; fix the function."
        ) from None
    return client_data_pair(result, f"dataset {path!r}")


def client_data_pair(result: Any, what: str = "the data") -> tuple[ClientData, ClientData]:
    """``(train, test)`` ClientData from ``result``: a pair of ClientData or mappings
    ``{client_id: (x, y)}``, with the same client ids (train's order kept)."""
    form = "(train, test), each a ClientData or a mapping {client_id: (x, y)}"
    if not isinstance(result, tuple | list) or len(result) != 2:
        got = f"a {type(result).__name__}" + (
            f" of {len(result)}" if isinstance(result, tuple | list) else ""
        )
        raise DataError(f"{what} returned {got}; it must return {form}.")
    pair = []
    for name, part in zip(("train", "test"), result, strict=True):
        if isinstance(part, ClientData):
            pair.append(part)
        elif isinstance(part, Mapping):
            try:
                pair.append(ClientData.from_mapping(part))
            except (TypeError, ValueError) as e:
                raise DataError(f"{what}: its {name} data: {e}") from None
        else:
            raise DataError(f"{what}: its {name} data is a {type(part).__name__}; {form}.")
    train, test = pair
    _check_same_clients(train, test, what)
    for name, part in (("train", train), ("test", test)):
        _check_values(part, f"{what}: its {name} data")
    return train, test


def _check_values(data: ClientData, what: str) -> None:
    """Examples a model can train and be measured on: some examples, numeric features
    without NaN or infinity, numeric labels, integer labels >= 0 (class indices); a
    one-line ``DataError`` naming the first client at fault."""
    if data.num_examples == 0:
        raise DataError(
            f"{what} has no examples (every client is empty); give the clients examples "
            "(e.g. fedp13n.partition's test_fraction > 0 for test data)."
        )
    for arr, kind in ((data.x, "features"), (data.y, "labels")):
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise DataError(
                f"{what}: the {kind} have dtype {arr.dtype}; they must be numbers (e.g. "
                + ("class indices: np.unique(y, return_inverse=True)[1])."
                   if kind == "labels" else "x.astype(np.float32)).")
            )  # fmt: skip
        if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
            cid = _first_client(data, ~np.isfinite(arr).reshape(len(arr), -1).all(axis=1))
            raise DataError(
                f"{what}: client {cid!r} has NaN or infinite {kind}; clean or drop those examples."
            )
    if data.y.dtype == np.bool_:
        raise DataError(
            f"{what}: the labels are booleans; give class indices, y.astype(np.int64) (0 and 1)."
        )
    if np.issubdtype(data.y.dtype, np.signedinteger) and int(data.y.min()) < 0:
        cid = _first_client(data, (data.y < 0).reshape(len(data.y), -1).any(axis=1))
        raise DataError(
            f"{what}: client {cid!r} has label {int(data.y.min())}; labels are class "
            "indices 0..num_classes-1 (relabel, e.g. np.unique(y, return_inverse=True)[1])."
        )


def _first_client(data: ClientData, bad: np.ndarray) -> str:
    """The id of the client holding the first example flagged in ``bad`` (one per row)."""
    row = int(np.argmax(bad))
    index = int(np.searchsorted(data.offsets, row, side="right")) - 1
    return data.client_ids[index]


def _check_same_clients(train: ClientData, test: ClientData, what: str) -> None:
    no_test = [c for c in train.client_ids if c not in test]
    no_train = [c for c in test.client_ids if c not in train]
    if no_test or no_train:
        part = f"{len(no_test)} train client(s) have no test data (e.g. {no_test[:3]})" \
            if no_test else f"{len(no_train)} test client(s) are not train clients " \
            f"(e.g. {no_train[:3]})"  # fmt: skip
        raise DataError(
            f"{what}: the train and test client ids differ: {part}; give every client "
            "both (an empty (x, y) is allowed)."
        )
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(
            f"{what}: train features have shape {train.x.shape[1:]} per example but test "
            f"features {test.x.shape[1:]}; they must match."
        )


#: More classes than this (and than examples) inferred from the labels is a mistake, not a
#: model: labels that are ids (1e9 + 1 outputs would not fit in memory), not 0..K-1.
MAX_INFERRED_CLASSES = 100_000


def infer_num_classes(train: ClientData, test: ClientData, what: str = "the data") -> int | None:
    """The largest integer label of either part + 1 (None for non-integer labels or no
    labels): the classes of a model of one's own data when ``num_classes`` is unset. A
    one-line ``DataError`` naming the label and its client when that is more than
    :data:`MAX_INFERRED_CLASSES` and more than the examples of both parts."""
    parts = [d for d in (train, test) if len(d.y)]
    if not parts or not all(np.issubdtype(d.y.dtype, np.integer) for d in parts):
        return None
    top_part = max(parts, key=lambda d: int(d.y.max()))
    top = int(top_part.y.max())
    examples = train.num_examples + test.num_examples
    if top + 1 > MAX_INFERRED_CLASSES and top + 1 > examples:
        cid = _first_client(top_part, (top_part.y == top).reshape(len(top_part.y), -1).any(1))
        raise DataError(
            f"{what}: client {cid!r} has label {top}, which would make {top + 1} classes "
            f"(the largest label + 1) for {examples} examples; labels are class indices "
            "0..K-1: remap them (np.unique(y, return_inverse=True)[1]), or set num_classes "
            "(--num-classes K) if the model has that many outputs."
        )
    return top + 1


# -- model and loss -----------------------------------------------------------------------------
def model_builder(model: str, num_classes: int | None) -> Callable[[], nn.Module]:
    """A picklable no-argument builder of ``model``: a name in
    :data:`fedp13n.models.registry.MODELS` or a researcher's ``"module:function"``,
    called with ``num_classes=`` when its signature has that parameter."""
    from fedp13n.models.registry import get_model_fn

    fn = resolve_import_path(model, "model") if is_import_path(model) else get_model_fn(model)
    if not callable(fn):
        raise ValueError(f"model {model!r} is a {type(fn).__name__}, not a function.")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "num_classes" in params:
        if num_classes is None:
            raise ValueError(
                f"model {model!r} takes num_classes, and the labels do not give it (not "
                "integers); set num_classes."
            )
        return functools.partial(fn, num_classes=num_classes)
    required = [n for n, p in params.items() if p.default is p.empty and p.kind in
                (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]  # fmt: skip
    if required:
        raise ValueError(
            f"model {model!r} needs argument(s) {required}; a model function takes no "
            "arguments, or num_classes only."
        )
    return fn


def task_loss(spec: TaskSpec, loss: str | None = None) -> TaskLoss:
    """The task's :class:`TaskLoss`: its loss (or the ``"module:function"`` ``loss``) with
    its accuracy (leaving the task's ``ignore_ids`` out of the count)."""
    fn = resolve_import_path(loss or spec.loss, "loss")
    if not callable(fn):
        raise ValueError(f"loss {loss or spec.loss!r} is a {type(fn).__name__}, not a function.")
    ignore = spec.ignore_ids
    if isinstance(ignore, str):
        ignore = resolve_import_path(ignore, f"task {spec.name!r} ignore_ids")
    return TaskLoss(fn, Accuracy(tuple(int(i) for i in ignore)))


# -- the dry run ----------------------------------------------------------------------------------
def check_model_fits(
    model_fn: Callable[[], Any], loss_fn: Callable[..., Any], train: ClientData,
    test: ClientData, model: str,
) -> None:  # fmt: skip
    """Build the model and run it and the loss on two examples of the first client with
    data, before any training: a ``ValueError`` of one line when the model cannot be
    built, fails on the examples, or its output does not fit the labels (integer labels
    need ``(batch, classes[, ...])`` logits with more classes than the largest label)."""
    cid = next((c for c in train.client_ids if train.size(c)), None)
    if cid is None:
        raise DataError("the training data has no examples (every client is empty).")
    x, y = train.create_dataset(cid).batch(slice(0, 2))
    what = f"model {model!r}"
    with torch.random.fork_rng(devices=[]):
        try:
            net = model_fn()
        except Exception as e:  # noqa: BLE001 - a researcher's builder failing its own way
            raise ValueError(f"{what} could not be built: {_exception_text(e)}.") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"{what} returned a {type(net).__name__}, not a torch.nn.Module.")
    if not any(p.requires_grad for p in net.parameters()):
        raise ValueError(
            f"{what} has no trainable parameters (none with requires_grad), so there is "
            "nothing to train; give it layers with parameters."
        )
    net.eval()
    shape = f"x of shape {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    try:
        with torch.random.fork_rng(devices=[]):
            out = net(x)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"{what} fails on 2 examples of client {cid!r} ({shape}): {_exception_text(e)}."
        ) from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{what} returns a {type(out).__name__}; it must return a tensor.")
    if not y.is_floating_point():
        _check_logits(out, y, max(int(d.y.max()) for d in (train, test) if len(d.y)), what)
    _check_loss(loss_fn, out, y, cid, what)


def _check_loss(
    loss_fn: Callable[..., Any], out: torch.Tensor, y: torch.Tensor, cid: str, what: str
) -> None:
    """The loss of the model's output ``out`` on labels ``y`` (2 examples of client
    ``cid``): one number, with a gradient, finite; else a one-line ``ValueError``."""
    try:
        value = loss_fn(out, y)
    except Exception as e:  # noqa: BLE001
        if y.is_floating_point() and getattr(loss_fn, "loss_fn", loss_fn) is F.cross_entropy:
            raise ValueError(_float_labels_text(y)) from None
        raise ValueError(
            f"the loss fails on {what}'s output of shape {tuple(out.shape)} for labels of "
            f"shape {tuple(y.shape)}: {_exception_text(e)}."
        ) from None
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError("the loss must return the batch mean, one number (a 0-d tensor).")
    if not value.requires_grad:
        raise ValueError(
            f"the loss on {what}'s output has no gradient (requires_grad is False); compute "
            "it from the outputs with torch operations (no .item(), numpy or a constant)."
        )
    if not torch.isfinite(value.detach()).all():
        bad = "output" if not torch.isfinite(out.detach()).all() else "loss"
        raise ValueError(
            f"the loss on 2 examples of client {cid!r} is {value.item()} (the {bad} is not "
            f"finite): {what} and the loss must give finite numbers on the data; check them."
        )


def _float_labels_text(y: torch.Tensor) -> str:
    """Why cross-entropy failed on float labels (not class probabilities of the output's
    shape), and the two fixes."""
    return (
        f"the labels are {str(y.dtype).replace('torch.', '')} numbers, but the loss is "
        "cross-entropy, which takes integer class indices: give "
        "integer class labels (y.astype(np.int64) for whole numbers, else "
        "np.unique(y, return_inverse=True)[1]), or a loss that takes float targets "
        "(loss = 'module:function', e.g. --loss my_task:mse_loss)."
    )


def _check_logits(out: torch.Tensor, y: torch.Tensor, top: int, what: str) -> None:
    """Logits ``(batch, classes, *label dims)`` with more classes than ``top``."""
    fits = out.dim() == y.dim() + 1 and out.shape[0] == y.shape[0]
    fits = fits and tuple(out.shape[2:]) == tuple(y.shape[1:])
    if not fits or out.shape[1] <= top:
        need = f"(batch, at least {top + 1} classes" + "".join(
            f", {n}" for n in y.shape[1:]) + ")"  # fmt: skip
        raise ValueError(
            f"{what} outputs shape {tuple(out.shape)} for labels of shape {tuple(y.shape)} "
            f"(largest label {top}); it must output logits {need}."
        )


def _exception_text(e: BaseException) -> str:
    message = " ".join(str(e).split()).rstrip(".")  # the caller ends the sentence
    return f"{type(e).__name__}: {message}" if message else type(e).__name__
