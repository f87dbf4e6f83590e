"""Any ``nn.Module`` as a batched function of K clients' weights, with ``torch.func``.

:class:`FunctionalModel` takes a model as ``model_fn`` builds it and computes, for K
clients at once, each client's loss and gradient (``torch.func.vmap`` over
``torch.func.grad_and_value`` of ``torch.func.functional_call``) and each client's logits
in evaluation. Whatever vmap can batch is batched: convolutions (vmap's rule turns K
clients' convolutions into one grouped convolution), linear layers, embeddings, pooling,
layer norm, activations, residual connections, a user's own ``forward``.

Randomness stays the per-client path's: before batching, every dropout module
(:class:`~fedp13n.models.layers.FastDropout`, ``nn.Dropout``) is swapped for a
:class:`MaskedDropout` that multiplies by a mask given as an *input* of the batched call,
one per dropout call in forward order, per client ``(B, *shape)``. The masks are drawn by
:mod:`fedp13n.engine.masks` from each client's generator exactly as the per-client layer
draws them (FastDropout's random bytes, ``nn.Dropout``'s ``bernoulli_``), for the client's
real batch size; padding rows get a zero mask.

What is not batched, with the reason (:func:`model_refusal`, and :meth:`FunctionalModel.probe`,
a dry run on one example that catches whatever vmap rejects): BatchNorm in training
(batch statistics would mix a client's padding into its real examples; running-statistics
buffers), recurrent modules (``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``: fused kernels vmap has no
rule for), any other buffer, frozen or non-float32 parameters, dropout variants whose masks
are not drawn as above (``Dropout2d``, ``AlphaDropout``, a ``FastDropout`` with its own
generator), ``nn.Dropout`` off the CPU (the per-client path draws its masks from the
device's generator), and random draws inside ``forward`` (vmap refuses them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vjp, vmap

from fedp13n.models.layers import FastDropout
from fedp13n.utils.types import ModelFn

__all__ = ["FunctionalModel", "MaskLayer", "MaskedDropout", "NotBatchable", "model_refusal"]


class NotBatchable(ValueError):
    """The engine cannot batch this model; the message is the one-line reason."""


@dataclass(frozen=True)
class MaskLayer:
    """One dropout call of a forward pass: its mask per example has shape ``per``; ``kind``
    ``"bytes"`` (FastDropout: uint8 random bytes, kept when ``>= threshold``) or
    ``"bernoulli"`` (``nn.Dropout``: float32 ``bernoulli_(1 - p) / (1 - p)``)."""

    kind: str
    p: float
    per: tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.kind == "bytes" else torch.float32


class _MaskFeed:
    """The masks of the call in progress, handed to the dropout modules in forward order;
    or, in a dry run, the list where they record their inputs' shapes."""

    def __init__(self) -> None:
        self.masks: Sequence[torch.Tensor] = ()
        self.pos = 0
        self.record: list[tuple[MaskLayer, torch.Size, bool]] | None = None


class MaskedDropout(nn.Module):
    """Inverted dropout whose mask is given (see the module docstring): ``x * mask``, the
    per-client layer's multiply, with its mask drawn by the engine."""

    def __init__(self, p: float, kind: str, feed: _MaskFeed) -> None:
        super().__init__()
        self.p, self.kind, self.feed = p, kind, feed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        feed = self.feed
        if feed.record is not None:  # dry run on one example
            layer = MaskLayer(self.kind, self.p, tuple(x.shape[1:]))
            feed.record.append((layer, x.shape, x.is_contiguous()))
            return x
        mask = feed.masks[feed.pos]
        feed.pos += 1
        if self.kind == "bytes":  # as fast_dropout: bool mask -> dtype, times 1 / (1 - p)
            return x * (mask >= round(self.p * 256)).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, kind={self.kind}"


_RECURRENT = (nn.RNNBase, nn.RNNCellBase)
_BATCHNORM = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


def _dropout_refusal(name: str, m: nn.Module, device: torch.device) -> str:
    if type(m) is FastDropout:
        if m.generator is not None:
            return f"FastDropout at {name!r} has its own generator"
        if m.p in (0.0, 1.0) or round(m.p * 256) == m.p * 256 or device.type == "cpu":
            return ""
    elif type(m) is nn.Dropout:
        if m.inplace:
            return f"nn.Dropout at {name!r} is in place"
        if device.type == "cpu" or m.p in (0.0, 1.0):
            return ""
    elif isinstance(m, nn.modules.dropout._DropoutNd):
        return f"{type(m).__name__} at {name!r} (only nn.Dropout and FastDropout are batched)"
    else:
        return ""
    return (
        f"{type(m).__name__} at {name!r} draws its masks from the {device.type} generator; "
        "use fedp13n.models.FastDropout with p a multiple of 1/256"
    )


def model_refusal(model: nn.Module, device: torch.device | str = "cpu") -> str:
    """Why the engine cannot batch ``model`` on ``device`` from its structure alone (``""``
    when nothing stands in the way; :meth:`FunctionalModel.probe` then tries vmap)."""
    device = torch.device(device)
    for name, m in model.named_modules():
        where = name or type(model).__name__
        if isinstance(m, _BATCHNORM) and m.training:
            return (
                f"{type(m).__name__} at {where!r} in training mode (batch statistics and "
                "running-statistics buffers are not batched)"
            )
        if isinstance(m, _RECURRENT):
            return f"recurrent module {type(m).__name__} at {where!r} (vmap has no rule for it)"
        why = _dropout_refusal(where, m, device)
        if why:
            return why
    if any(True for _ in model.buffers()):
        return f"model {type(model).__name__} has buffers (only parameters are batched)"
    if not all(p.requires_grad for p in model.parameters()):
        return "model has frozen parameters (requires_grad=False)"
    if not all(p.dtype == torch.float32 for p in model.parameters()):
        return "model parameters are not float32"
    return ""


def _swap_dropout(model: nn.Module, feed: _MaskFeed) -> None:
    """Replace every dropout module by a :class:`MaskedDropout` (a module used twice
    stays one module)."""
    swapped: dict[int, MaskedDropout] = {}
    for parent in list(model.modules()):
        for child_name, m in list(parent.named_children()):
            if type(m) not in (FastDropout, nn.Dropout):
                continue
            if id(m) not in swapped:
                exact = type(m) is FastDropout and round(m.p * 256) == m.p * 256
                swapped[id(m)] = MaskedDropout(m.p, "bytes" if exact else "bernoulli", feed)
            setattr(parent, child_name, swapped[id(m)])


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {text[:200]}"


class FunctionalModel:
    """``model`` (a fresh one: its dropout modules are swapped, it is moved to ``device``)
    as batched functions of stacked weights (see the module docstring). ``NotBatchable``
    when :func:`model_refusal` has a reason on ``device``."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        if not isinstance(model, nn.Module):
            raise NotBatchable(f"model_fn() returned a {type(model).__name__}, not an nn.Module")
        why = model_refusal(model, device)
        if why:
            raise NotBatchable(why)
        self.device = device
        self.feed = _MaskFeed()
        _swap_dropout(model, self.feed)
        self.model = model.to(device)
        self.names = [n for n, _ in model.named_parameters()]
        self._probed: dict[tuple, list[MaskLayer]] = {}
        #: target ids the accuracy leaves out (set by the engine before each call)
        self.ignore_ids: tuple[int, ...] = ()
        self._eval_under_grad = False
        self._train_fn = vmap(grad_and_value(self._loss, has_aux=True))
        self._eval_fns = (vmap(self._logits), vmap(self._logits_under_grad))

    # -- the per-client functions (vmapped) ----------------------------------------------------
    def _call(self, params: dict[str, torch.Tensor], x: torch.Tensor, masks: Any) -> torch.Tensor:
        self.feed.masks, self.feed.pos = masks, 0
        try:
            return functional_call(self.model, params, (x,))
        finally:
            self.feed.masks = ()

    def _loss(self, params, x, y, valid, n, masks):
        logits = self._call(params, x, masks)
        ce = example_losses(logits, y)
        loss = torch.where(valid, ce, 0.0).sum() / n.clamp(min=1)
        correct, counted = accuracy_counts(logits, y, valid, self.ignore_ids)
        return loss, (correct, counted)

    def _logits(self, params, x):
        return self._call(params, x, ())

    def _logits_under_grad(self, params, x):
        # Some models query memory layouts (x.contiguous(memory_format=channels_last)),
        # which plain vmap refuses but vmap over a grad transform allows.
        return vjp(lambda p: self._call(p, x, ()), params)[0]

    # -- batched calls ---------------------------------------------------------------------
    def train_step(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        n: torch.Tensor,
        masks: Sequence[torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Per-client gradients, mean losses ``(K,)`` and accuracy counts (correct, counted
        targets; ``(K,)`` each) of a step: ``x`` ``(K, B, *row)``, labels ``(K, B,
        *label)``, ``valid`` ``(K, B)`` (False: padding), real batch sizes ``n`` ``(K,)``,
        the masks of :meth:`probe`'s layers ``(K, B, *per)``."""
        self.model.train()
        grads, (loss, counts) = self._train_fn(params, x, y, valid, n, tuple(masks))
        return grads, loss, counts

    @torch.no_grad()
    def logits(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Evaluation-mode logits ``(K, B, classes, *label)`` of the K clients on ``x``."""
        self.model.eval()
        return self._eval_fns[self._eval_under_grad](params, x)

    # -- the dry run -----------------------------------------------------------------------
    def probe(
        self, row: tuple[int, ...], dtype: torch.dtype, label: tuple[int, ...] = ()
    ) -> list[MaskLayer]:
        """The dropout calls of a forward pass on examples of shape ``row`` (recorded on one
        example), after checking that vmap batches training and evaluation (two clients of
        two examples, labels of shape ``label`` each); ``NotBatchable`` with the reason
        otherwise. Once per row, dtype and label shape."""
        key = (tuple(row), dtype, tuple(label))
        if key not in self._probed:
            self._probed[key] = self._dry_run(tuple(row), dtype, tuple(label))
        return self._probed[key]

    def _dry_run(
        self, row: tuple[int, ...], dtype: torch.dtype, label: tuple[int, ...]
    ) -> list[MaskLayer]:
        one = torch.zeros((1, *row), dtype=dtype, device=self.device)
        self.model.train()
        self.feed.record = []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                self.model(one)
            recorded = self.feed.record
        except Exception as e:  # noqa: BLE001 - any failure is the reason to refuse
            why = f"the model fails on one example of shape {row}: {_one_line(e)}"
            raise NotBatchable(why) from e
        finally:
            self.feed.record = None
        for layer, shape, contiguous in recorded:
            if len(shape) < 1 or shape[0] != 1:
                raise NotBatchable(f"a dropout input of shape {tuple(shape)} has no batch axis")
            if layer.kind == "bernoulli" and not contiguous:
                raise NotBatchable("nn.Dropout on a non-contiguous input (masks follow its layout)")
        layers = [layer for layer, _, _ in recorded]
        self._check_vmap(row, dtype, label, layers)
        return layers

    def _check_vmap(
        self, row: tuple[int, ...], dtype: torch.dtype, label: tuple[int, ...], layers: list
    ) -> list[MaskLayer]:
        K, B = 2, 2
        params = {
            n: p.detach().unsqueeze(0).expand(K, *p.shape).contiguous()
            for n, p in self.model.named_parameters()
        }
        x = torch.zeros((K, B, *row), dtype=dtype, device=self.device)
        masks = [torch.ones((K, B, *m.per), dtype=m.dtype, device=self.device) for m in layers]
        y = torch.zeros((K, B, *label), dtype=torch.long, device=self.device)
        valid = torch.ones((K, B), dtype=torch.bool, device=self.device)
        n = torch.full((K,), B, device=self.device)
        with torch.random.fork_rng(devices=[]):
            try:
                self.train_step(params, x, y, valid, n, masks)
            except Exception as e:  # noqa: BLE001
                raise NotBatchable(f"torch.func.vmap rejects the model: {_one_line(e)}") from e
            if self.feed.pos != len(masks):
                raise NotBatchable("the dropout calls differ between one and several examples")
            self._eval_under_grad = False
            try:
                self.logits(params, x)
            except Exception:  # noqa: BLE001 - try under a grad transform
                self._eval_under_grad = True
                try:
                    self.logits(params, x)
                except Exception as e:  # noqa: BLE001
                    raise NotBatchable(
                        f"torch.func.vmap rejects the model in evaluation: {_one_line(e)}"
                    ) from e
        return layers


def example_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each example's cross-entropy ``(B,)``: logits ``(B, classes, *label)``, labels ``(B,
    *label)``; for a label per position (a sequence) the mean over the example's positions,
    so the batch mean is ``F.cross_entropy`` over the batch, as the per-client path takes it."""
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    return ce.flatten(1).mean(1) if ce.dim() > 1 else ce


def accuracy_counts(
    logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, ignore_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(right answers, targets counted) of a batch, as
    :meth:`fedp13n.models.objectives.Accuracy.counts` on its valid examples (``valid``
    ``(B,)``): the arg-max over the class axis (dim 1) equal to the target, over the
    targets whose id is not in ``ignore_ids``."""
    keep = valid.view(valid.shape + (1,) * (y.dim() - 1)).expand(y.shape)
    for i in ignore_ids:
        keep = keep & (y != i)
    return ((logits.argmax(1) == y) & keep).sum(), keep.sum()


def input_rows(
    model: nn.Module,
) -> tuple[tuple[int, ...], torch.dtype, tuple[int, ...]] | None:
    """One example's feature shape and dtype, and its label shape, from the model's
    declared ``input_spec`` (``None`` when it declares none or leaves a size open)."""
    spec = getattr(model, "input_spec", None)
    shape = getattr(spec, "x_shape", None)
    label = getattr(spec, "y_shape", ())
    if not isinstance(shape, tuple) or any(d is None for d in (*shape, *label)):
        return None
    return shape, getattr(spec, "x_dtype", None) or torch.float32, tuple(label)


def refusal(model_fn: ModelFn, device: torch.device | str = "cpu") -> str:
    """Why ``model_fn()``'s clients cannot be batched on ``device`` (``""``: they can):
    :func:`model_refusal`, then a dry run on the CPU on one example of the model's
    ``input_spec`` when it declares one (without, the engine dry-runs on the first data
    it gets)."""
    with torch.random.fork_rng(devices=[]):
        model = model_fn()
    try:
        if isinstance(model, nn.Module):
            why = model_refusal(model, device)
            if why:
                return why
        fm = FunctionalModel(model, torch.device("cpu"))
        rows = input_rows(fm.model)
        if rows is not None:
            fm.probe(*rows)
    except NotBatchable as e:
        return str(e)
    return ""
