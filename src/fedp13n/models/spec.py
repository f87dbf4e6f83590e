"""What one example looks like to a model: TFF's ``input_spec``, for PyTorch modules.

A TFF model carries an ``input_spec`` (the type of one batch), and TFF refuses client
data whose elements do not match it. PyTorch modules carry nothing of the kind, so
fedp13n lets a model declare one: an ``input_spec`` attribute holding an
:class:`InputSpec` with the shapes and dtypes of *one* example, as the model sees them
(features after :func:`~fedp13n.data.client_data.features_to_tensor`: ``uint8`` pixels
are ``float32``; labels after ``labels_to_tensor``: integers are ``int64``). fedp13n's
EMNIST models declare theirs; a user's model declares one with e.g.::

    model = nn.Linear(2, 1)
    model.input_spec = InputSpec(x_shape=(2,), y_shape=(1,), y_dtype=torch.float32)

Personalization evaluation checks every client's data against it (see
:func:`fedp13n.personalization.inputs.check_fits_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class InputSpec:
    """Per-example shapes and dtypes of a model's inputs ``x`` and labels ``y``.

    ``None`` in a shape accepts any size on that axis; a ``None`` dtype accepts any
    dtype. ``also_x_shapes`` lists further accepted feature shapes (the EMNIST models
    take ``(28, 28)`` or ``(1, 28, 28)`` images).
    """

    x_shape: Shape
    y_shape: Shape = ()
    x_dtype: torch.dtype | None = torch.float32
    y_dtype: torch.dtype | None = torch.int64
    also_x_shapes: tuple[Shape, ...] = ()

    def __post_init__(self) -> None:
        for shape in (self.x_shape, self.y_shape, *self.also_x_shapes):
            if not isinstance(shape, tuple) or not all(
                d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                for d in shape
            ):
                raise TypeError(
                    f"InputSpec shapes must be tuples of non-negative ints or None (one "
                    f"example, no batch dimension), got {shape!r}."
                )
        for dtype in (self.x_dtype, self.y_dtype):
            if dtype is not None and not isinstance(dtype, torch.dtype):
                raise TypeError(f"InputSpec dtypes must be torch dtypes or None, got {dtype!r}.")

    def x_mismatch(self, shape: tuple[int, ...], dtype: torch.dtype) -> str | None:
        """Why features of per-example ``shape``/``dtype`` do not fit, or ``None``."""
        shapes = (self.x_shape, *self.also_x_shapes)
        if not any(_fits(shape, s) for s in shapes):
            want = " or ".join(_fmt(s) for s in shapes)
            return f"features of shape {_fmt(shape)} per example, the model expects {want}"
        if self.x_dtype is not None and dtype != self.x_dtype:
            return f"features of dtype {dtype}, the model expects {self.x_dtype}"
        return None

    def y_mismatch(self, shape: tuple[int, ...], dtype: torch.dtype) -> str | None:
        """Why labels of per-example ``shape``/``dtype`` do not fit, or ``None``."""
        if not _fits(shape, self.y_shape):
            return (
                f"labels of shape {_fmt(shape)} per example, the model expects {_fmt(self.y_shape)}"
            )
        if self.y_dtype is not None and dtype != self.y_dtype:
            return f"labels of dtype {dtype}, the model expects {self.y_dtype}"
        return None


def input_spec_of(model: Any) -> InputSpec | None:
    """The model's declared :class:`InputSpec` (its ``input_spec`` attribute), or ``None``.

    Raises ``TypeError`` when the attribute exists but is not an ``InputSpec``.
    """
    if not isinstance(model, nn.Module):
        return None
    spec = getattr(model, "input_spec", None)
    if spec is None or isinstance(spec, InputSpec):
        return spec
    raise TypeError(
        f"{type(model).__name__}.input_spec is a {type(spec).__name__}; it must be a "
        "fedp13n.models.InputSpec (per-example shapes and dtypes) or None."
    )


def _fits(shape: tuple[int, ...], spec: Shape) -> bool:
    if len(shape) != len(spec):
        return False
    return all(s is None or s == d for d, s in zip(shape, spec, strict=True))


def _fmt(shape: Shape) -> str:
    inner = ", ".join("None" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def check_model_fn(model_fn: Any) -> None:
    """A one-line ``TypeError`` unless ``model_fn`` is a no-argument model builder (a model
    *instance* is the usual mistake: every client starts from a fresh model)."""
    if isinstance(model_fn, nn.Module):
        raise TypeError(
            f"model_fn is a {type(model_fn).__name__} instance; pass a no-argument function "
            "that builds a fresh model (e.g. functools.partial(emnist_conv_dropout, "
            "num_classes=62)), since every client starts from a fresh one."
        )
    if not callable(model_fn):
        raise TypeError(
            f"model_fn must be a no-argument callable returning an nn.Module, got {model_fn!r}."
        )


def num_classes(model: nn.Module, x_one: torch.Tensor) -> int | None:
    """The classes of a classifier: the size of the class axis (dim 1) of its output for
    one example ``x_one`` (a batch of 1); None when the output is not ``(1, C, ...)``.
    A dry forward in eval mode, without gradient, the RNG untouched."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            out = model(x_one)
        finally:
            model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != 1:
        return None
    return int(out.shape[1])


def check_labels_fit(classes: int | None, y: Any, what: str) -> None:
    """A one-line ``ValueError`` when integer labels ``y`` (numpy) fall outside a
    classifier's ``classes`` (a label past the output would fail deep inside the loss, and
    on a GPU stop the process with a device-side assert)."""
    import numpy as np

    if classes is None or len(y) == 0 or not np.issubdtype(y.dtype, np.integer):
        return
    lo, hi = int(np.min(y)), int(np.max(y))
    if lo < 0 or hi >= classes:
        raise ValueError(
            f"{what}: label {lo if lo < 0 else hi} is outside the model's {classes} classes "
            f"(0..{classes - 1}); build the model with as many classes as the data has "
            "(e.g. num_classes=62 for EMNIST-62) or relabel the data."
        )
