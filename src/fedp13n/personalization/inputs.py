"""Checking what users hand to personalization: unbatched client datasets and client inputs.

TFF's personalization evaluation takes *unbatched* datasets because batching is each
strategy's own choice (one strategy may fine-tune with batch size 5, another with 20).
The most common mistake is to pass data that is already batched (a ``DataLoader``, a list
of ``(x, y)`` batches); it would silently train on the wrong examples, so it is refused
here with a message that says what to pass instead.

As TFF's type check, a client input must have exactly the expected keys (a missing
``train_data``/``test_data`` or an unknown key is a ``TypeError``), and every client's
data must fit the model (:func:`check_fits_model`: against the model's declared
``input_spec``, or by a dry forward of one example when it declares none).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fedp13n.data.client_data import ClientDataset, features_to_tensor, labels_to_tensor
from fedp13n.models.spec import InputSpec, check_labels_fit, input_spec_of, num_classes
from fedp13n.utils.checks import error_line

#: Keys a client input may have. ``train_data``/``test_data`` are required (TFF's names);
#: ``context`` is handed to every strategy (TFF's optional context); ``client_id`` names
#: the client in the result.
REQUIRED_KEYS = ("train_data", "test_data")
OPTIONAL_KEYS = ("context", "client_id")

_UNBATCHED_HINT = (
    "pass the client's unbatched examples: a fedp13n.data.ClientDataset "
    "(e.g. client_data.create_dataset(client_id)) or an (x, y) tuple of numpy arrays / "
    "torch tensors with one row per example. Batching is the strategy's business."
)


def as_client_dataset(data: Any, what: str = "dataset") -> ClientDataset:
    """``data`` as a :class:`ClientDataset`, or a ``TypeError``/``ValueError`` naming ``what``.

    Accepts a ``ClientDataset`` (returned as is) or an ``(x, y)`` tuple/list whose two
    elements are numpy arrays or torch tensors of the same length. Anything else,
    in particular batched data (a torch ``DataLoader``, a list of batches), is refused.
    """
    if isinstance(data, ClientDataset):
        return data
    if isinstance(data, torch.utils.data.DataLoader):
        raise TypeError(f"{what} is a torch DataLoader, i.e. batched data; {_UNBATCHED_HINT}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(_is_array(a) for a in data):
        x, y = data
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(
                f"{what}: x and y must have one row per example, got shapes "
                f"{tuple(x.shape)} and {tuple(y.shape)}."
            )
        if len(x) != len(y):
            raise ValueError(
                f"{what} has {len(x)} feature rows but {len(y)} labels; x and y must have "
                "one row per example each."
            )
        return ClientDataset.from_arrays(_detached(x), _detached(y))
    if isinstance(data, (tuple, list)) and data and all(_looks_like_batch(b) for b in data):
        raise TypeError(f"{what} looks like a list of (x, y) batches; {_UNBATCHED_HINT}")
    raise TypeError(
        f"{what} is a {type(data).__name__}, not unbatched client data; {_UNBATCHED_HINT}"
    )


def one_example_dataset(spec: InputSpec) -> ClientDataset:
    """One all-zero example shaped and typed as ``spec`` says (any-size axes get size 1;
    integer labels are class 0): what a dry run of a user's strategies and evaluation runs
    on, since they need not handle a client without examples."""

    def zeros(shape: tuple[int | None, ...], dtype: torch.dtype | None, default: Any) -> Any:
        np_dtype = default if dtype is None else torch.empty(0, dtype=dtype).numpy().dtype
        return np.zeros((1, *(1 if d is None else d for d in shape)), dtype=np_dtype)

    return ClientDataset(
        zeros(spec.x_shape, spec.x_dtype, np.float32), zeros(spec.y_shape, spec.y_dtype, np.int64)
    )


def check_client_input(client_input: Any, position: int) -> dict[str, Any]:
    """Validate one client input (a mapping) and return it with datasets normalized."""
    where = f"client input {position}"
    if not isinstance(client_input, Mapping):
        raise TypeError(
            f"{where} is a {type(client_input).__name__}; each client input must be a mapping "
            "with keys 'train_data' and 'test_data' (and optionally 'context', 'client_id')."
        )
    missing = [k for k in REQUIRED_KEYS if k not in client_input]
    if missing:
        raise TypeError(
            f"{where} has no {' and no '.join(repr(k) for k in missing)}; each client input "
            f"needs 'train_data' and 'test_data' (it has {sorted(map(str, client_input))})."
        )
    unknown = [k for k in client_input if k not in REQUIRED_KEYS + OPTIONAL_KEYS]
    if unknown:
        raise TypeError(
            f"{where} has unknown keys {unknown}; allowed are "
            f"{list(REQUIRED_KEYS + OPTIONAL_KEYS)} (put extra information in 'context')."
        )
    if "client_id" in client_input:
        where = f"client {client_input['client_id']!r} (input {position})"
    out = dict(client_input)
    for key in REQUIRED_KEYS:
        out[key] = as_client_dataset(client_input[key], f"{key} of {where}")
    out["client_id"] = str(client_input.get("client_id", position))
    out.setdefault("context", None)
    return out


def check_fits_model(model: nn.Module, data: ClientDataset, what: str) -> None:
    """A ``TypeError`` naming both shapes unless ``data``'s examples fit ``model``.

    With a declared ``model.input_spec`` (:class:`~fedp13n.models.InputSpec`) the
    per-example shapes and dtypes must match it, as TFF checks a client's unbatched
    elements against its model's input spec: data with an extra leading axis (already
    batched) is refused. Without one, what can be checked is: the model must take one
    example (a dry forward, in eval mode, no gradient, the RNG untouched) and return one
    output row, and the labels must fit that output: the same per-example shape (a
    regression target) or, for integer labels, that shape without the class axis
    (``out[1:] == (C, *y[1:])``), so that no loss is silently broadcast.
    """
    _check_values(data, what)
    x_shape, y_shape = tuple(data.x.shape[1:]), tuple(data.y.shape[1:])
    x_dtype = features_to_tensor(data.x[:0]).dtype
    y_dtype = labels_to_tensor(data.y[:0]).dtype
    shapes = f"x {tuple(data.x.shape)}, y {tuple(data.y.shape)}"
    spec = input_spec_of(model)
    if spec is not None:
        why = spec.x_mismatch(x_shape, x_dtype) or spec.y_mismatch(y_shape, y_dtype)
        if why:
            raise TypeError(
                f"{what} ({shapes}) does not fit the model's input_spec: it has {why}; "
                f"{_spec_hint(spec)}"
            )
        if len(data) and not y_dtype.is_floating_point:
            check_labels_fit(_classes(model, data), data.y, what)
        return
    if len(data):
        _check_by_forward(model, data, what, shapes)


def _check_by_forward(model: nn.Module, data: ClientDataset, what: str, shapes: str) -> None:
    """:func:`check_fits_model` for a model without an ``input_spec``: a dry forward of
    one example, its output against the labels."""
    x_shape, y_shape = tuple(data.x.shape[1:]), tuple(data.y.shape[1:])
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            out = model(features_to_tensor(data.x[:1]))
        except Exception as e:  # noqa: BLE001 - any failure means the data does not fit
            raise TypeError(
                f"{what} ({shapes}) does not fit the model: a forward pass of one example "
                f"(features of shape {x_shape}) failed with {error_line(e)}; "
                "pass unbatched examples the model accepts (or declare model.input_spec)."
            ) from None
        finally:
            model.train(was_training)
    if not isinstance(out, torch.Tensor):
        return  # nothing more to compare labels against
    out_shape = tuple(out.shape)
    if not out_shape or out_shape[0] != 1:
        raise TypeError(
            f"{what} ({shapes}) does not fit the model: one example (features of shape "
            f"{x_shape}) gave an output of shape {out_shape}, not one row; is the data "
            "already batched? Pass one row per example (or declare model.input_spec)."
        )
    per_example = out_shape[1:]
    if y_shape == per_example:
        return
    if not labels_to_tensor(data.y[:0]).dtype.is_floating_point and y_shape == per_example[1:]:
        check_labels_fit(per_example[0], data.y, what)
        return
    raise TypeError(
        f"{what} ({shapes}) does not fit the model: labels of shape {y_shape} per example "
        f"but the model outputs {per_example} per example (features of shape {x_shape}); "
        "the loss would broadcast the two. Give labels of the output's shape (integer class "
        "labels: without the class axis), or declare model.input_spec."
    )


def _check_values(data: ClientDataset, what: str) -> None:
    """Labels that are no numbers (bool, text) and features or labels that are not finite
    are refused: they would train or score silently wrong (True as class 1, a NaN loss)."""
    if data.y.dtype == np.bool_ or data.y.dtype.kind in "USO":
        raise TypeError(
            f"{what}: its labels are {data.y.dtype}, not numbers; give integer class "
            "indices 0..K-1 (e.g. y.astype(np.int64)) or float regression targets."
        )
    for name, a in (("features", data.x), ("labels", data.y)):
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise ValueError(
                f"{what}: its {name} hold NaN or infinite values; remove or impute them "
                "before evaluating."
            )


#: Classes of the models checked here, by per-example feature shape (one dry forward each).
_CLASSES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int | None]] = (
    weakref.WeakKeyDictionary()
)


def _classes(model: nn.Module, data: ClientDataset) -> int | None:
    by_shape = _CLASSES.setdefault(model, {})
    key = tuple(data.x.shape[1:])
    if key not in by_shape:
        by_shape[key] = num_classes(model, features_to_tensor(data.x[:1]))
    return by_shape[key]


def _spec_hint(spec: InputSpec) -> str:
    x = " or ".join(
        "(n, " + ", ".join("?" if d is None else str(d) for d in s) + ")"
        for s in (spec.x_shape, *spec.also_x_shapes)
    )
    y = "(n, " + ", ".join("?" if d is None else str(d) for d in spec.y_shape) + ")"
    x, y = x.replace(", )", ")"), y.replace(", )", ")")
    return (
        f"pass unbatched examples: x of shape {x}, y of shape {y} "
        "(an extra leading axis means the data is already batched)."
    )


def _is_array(a: Any) -> bool:
    return isinstance(a, (np.ndarray, torch.Tensor))


def _detached(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


def _looks_like_batch(b: Any) -> bool:
    return isinstance(b, (tuple, list)) and len(b) == 2 and all(_is_array(a) for a in b)
