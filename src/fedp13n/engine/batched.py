"""The multi-client engine: K clients trained in lockstep as one batched computation.

Federated clients train small models on small batches (20 examples): one client at a time
leaves a GPU idle, and even a CPU core mostly waits on per-operator overhead. Here the K
clients' weights are stacked along a leading client dimension and every layer runs once
for all of them: a convolution becomes one grouped convolution (``groups=K``), a dense
layer one batched matrix product (``baddbmm``), the loss one masked cross-entropy whose
sum over clients has, for each client's weights, exactly that client's gradient (the
clients' weights are independent). That is the batched form ``torch.func.vmap`` over
``functional_call`` would give, written out so that each client's dropout masks, drawn
from the client's own generator, go straight into the forward pass.

The numbers are those of the one-client-at-a-time path up to float rounding:

* **Example order**: each client's batches are :func:`fedp13n.data.pipeline.batch_plan`
  drawn from the client's own numpy generator, as the per-client path does.
* **Unequal clients**: batches are padded to the batch size and steps to the longest
  client; a padded example has loss weight 0 (no loss, no gradient, dropout mask 0) and a
  client without a batch at a step skips the optimizer step entirely (no Adam moment or
  step count moves). Epochs are aligned (every client's epoch ``e`` runs in the same
  block of steps), so evaluation after an epoch sees every client after its epoch.
* **Dropout** (:class:`~fedp13n.models.layers.FastDropout`): each client has a
  ``torch.Generator`` seeded as the per-client path seeds torch's global one, and at every
  step its masks are drawn for its real batch size, layer after layer in forward order:
  the same bytes the per-client path draws. Drawing them is CPU work (a CPU generator:
  the per-client path's bytes) that would leave a GPU waiting at large K, so on a GPU a
  pool of ``mask_threads`` threads draws them a few steps ahead (:class:`_MaskPrefetcher`;
  clients are split among the threads and each client's generator is used by one thread,
  step after step, so the bytes are exactly the same) into pinned memory, copied to the
  device without blocking.
* **Optimizers** are implemented on the stacked weights with per-client step masks:
  SGD ``p -= lr * g`` and Adam with torch's formula (``torch.optim.Adam``'s single-tensor
  code: ``lerp``/``addcmul`` moments, bias corrections per client step count).

What is batched (:func:`can_batch` says, with the reason when not): models without
buffers whose every parameter is trained, built from ``Conv2d`` (groups 1, zero padding),
``Linear``, ``ReLU``, ``MaxPool2d``, ``Flatten``, ``FastDropout`` and ``Identity`` as an
``nn.Sequential`` (nested allowed), or the EMNIST models of :mod:`fedp13n.models.emnist`;
cross-entropy loss on integer labels; ``torch.optim.SGD`` without momentum, weight decay,
nesterov or maximize, and ``torch.optim.Adam`` without weight decay, amsgrad or maximize.
Anything else (momentum, ``nn.Dropout``, BatchNorm, another optimizer) runs the caller's
per-client path (``fallback=``), with one warning per reason and process.

Data: each client's examples are moved to the engine's device once per call
(FedAvg round, personalization evaluation), uint8 pixels as bytes, converted on the
device by the lookup table of :data:`fedp13n.data.client_data.UINT8_TO_UNIT` (the exact
float32 values of the per-client path).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.client.program import EVAL_BATCH_SIZE
from fedp13n.data.client_data import UINT8_TO_UNIT, ClientDataset, features_to_tensor
from fedp13n.data.pipeline import DEFAULT_CLIENT_PIPELINE, batch_plan
from fedp13n.models.emnist import EmnistConvDropout, FedAvgCNN
from fedp13n.models.layers import FastDropout, random_bytes
from fedp13n.utils.checks import check_non_negative_int, check_positive_int
from fedp13n.utils.seeding import derive_rng, derive_seed
from fedp13n.utils.types import ModelFn

__all__ = [
    "ClientResult",
    "MultiClientEngine",
    "OptimizerSpec",
    "StrategySpec",
    "can_batch",
    "compute_beside",
    "engine_or_none",
    "fedavg_generators",
    "note_fallback",
    "optimizer_spec",
    "p13n_generator",
    "strategy_from_builder",
]


# -- what can be batched ------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimizerSpec:
    """A client optimizer the engine implements: ``kind`` ``"sgd"`` (``p -= lr * g``) or
    ``"adam"`` (torch's Adam with these ``betas`` and ``eps``)."""

    kind: str
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.kind not in ("sgd", "adam"):
            raise ValueError(f"OptimizerSpec kind must be 'sgd' or 'adam', got {self.kind!r}.")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"OptimizerSpec lr must be a finite number >= 0, got {self.lr!r}.")


def optimizer_spec(optimizer_fn: Any) -> tuple[OptimizerSpec | None, str]:
    """``(spec, "")`` for an optimizer the engine implements, else ``(None, reason)``.

    ``optimizer_fn`` is an :class:`OptimizerSpec` or a ``params -> torch.optim.Optimizer``
    callable (e.g. ``functools.partial(torch.optim.SGD, lr=0.02)``), which is built once on
    a dummy parameter to read its settings.
    """
    if isinstance(optimizer_fn, OptimizerSpec):
        return optimizer_fn, ""
    if not callable(optimizer_fn):
        return None, f"optimizer {optimizer_fn!r} is neither an OptimizerSpec nor callable"
    try:
        opt = optimizer_fn([nn.Parameter(torch.zeros(1))])
    except Exception as e:  # noqa: BLE001 - any failure means "cannot tell": fall back
        return None, f"the optimizer could not be built on a test parameter ({e})"
    if len(opt.param_groups) != 1:
        return None, "the optimizer has several parameter groups"
    g = opt.param_groups[0]
    lr = float(g["lr"])
    if type(opt) is torch.optim.SGD:
        for key, ok in (
            ("momentum", 0),
            ("weight_decay", 0),
            ("nesterov", False),
            ("maximize", False),
        ):
            if g.get(key, ok) != ok:
                return None, f"SGD with {key}={g[key]!r} (only plain SGD is batched)"
        return OptimizerSpec("sgd", lr), ""
    if type(opt) is torch.optim.Adam:
        for key, ok in (
            ("weight_decay", 0),
            ("amsgrad", False),
            ("maximize", False),
            ("decoupled_weight_decay", False),
        ):
            if g.get(key, ok) != ok:
                return None, f"Adam with {key}={g[key]!r} (not batched)"
        betas = tuple(float(b) for b in g["betas"])
        return OptimizerSpec("adam", lr, betas, float(g["eps"])), ""
    return None, f"optimizer {type(opt).__name__} (only SGD and Adam are batched)"


@dataclass(frozen=True)
class _Op:
    """One step of a model's forward: ``kind`` and, for layers with weights, the state-dict
    prefix ``name``; ``args`` are the layer's settings."""

    kind: str  # image | conv | linear | relu | maxpool | flatten | dropout
    name: str = ""
    args: tuple = ()


def _conv_op(name: str, m: nn.Conv2d) -> tuple[_Op | None, str]:
    if m.groups != 1 or m.padding_mode != "zeros":
        return None, f"Conv2d {name!r} with groups={m.groups}, padding_mode={m.padding_mode!r}"
    return _Op("conv", name, (m.stride, m.padding, m.dilation, m.bias is not None)), ""


def _sequential_program(module: nn.Module, prefix: str = "") -> tuple[list[_Op] | None, str]:
    ops: list[_Op] = []
    for child_name, m in module.named_children():
        name = f"{prefix}{child_name}"
        if isinstance(m, nn.Sequential):
            sub, why = _sequential_program(m, f"{name}.")
            if sub is None:
                return None, why
            ops += sub
        elif type(m) is nn.Conv2d:
            op, why = _conv_op(name, m)
            if op is None:
                return None, why
            ops.append(op)
        elif type(m) is nn.Linear:
            ops.append(_Op("linear", name, (m.bias is not None,)))
        elif type(m) is nn.ReLU:
            ops.append(_Op("relu"))
        elif type(m) is nn.MaxPool2d:
            if m.dilation not in (1, (1, 1)) or m.ceil_mode or m.return_indices:
                return None, f"MaxPool2d {name!r} with dilation, ceil_mode or return_indices"
            ops.append(_Op("maxpool", args=(m.kernel_size, m.stride, m.padding)))
        elif type(m) is nn.Flatten:
            if m.start_dim != 1 or m.end_dim != -1:
                return None, f"Flatten {name!r} with start_dim={m.start_dim}, end_dim={m.end_dim}"
            ops.append(_Op("flatten"))
        elif type(m) is FastDropout:
            if m.p not in (0.0, 1.0) and round(m.p * 256) != m.p * 256:
                return None, f"FastDropout {name!r} with p={m.p} (not a multiple of 1/256)"
            ops.append(_Op("dropout", args=(m.p,)))
        elif type(m) is nn.Identity:
            continue
        else:
            what = (
                "nn.Dropout draws bernoulli masks; use FastDropout"
                if isinstance(m, nn.Dropout)
                else f"layer {type(m).__name__}"
            )
            return None, f"unsupported {what} at {name!r}"
    return ops, ""


def model_program(model: nn.Module) -> tuple[list[_Op] | None, str]:
    """The batched forward program of ``model``, or ``(None, reason)``."""
    if isinstance(model, EmnistConvDropout) and type(model) is EmnistConvDropout:
        d1, d2 = model.dropout1.p, model.dropout2.p
        return [
            _Op("image"),
            _Op("conv", "conv1", ((1, 1), (0, 0), (1, 1), True)),
            _Op("relu"),
            _Op("conv", "conv2", ((1, 1), (0, 0), (1, 1), True)),
            _Op("maxpool", args=(2, 2, 0)),
            _Op("relu"),
            _Op("dropout", args=(d1,)),
            _Op("flatten"),
            _Op("linear", "fc1", (True,)),
            _Op("relu"),
            _Op("dropout", args=(d2,)),
            _Op("linear", "fc2", (True,)),
        ], ""
    if type(model) is FedAvgCNN:
        return [
            _Op("image"),
            _Op("conv", "conv1", ((1, 1), (2, 2), (1, 1), True)),
            _Op("maxpool", args=(2, 2, 0)),
            _Op("relu"),
            _Op("conv", "conv2", ((1, 1), (2, 2), (1, 1), True)),
            _Op("maxpool", args=(2, 2, 0)),
            _Op("relu"),
            _Op("flatten"),
            _Op("linear", "fc1", (True,)),
            _Op("relu"),
            _Op("linear", "fc2", (True,)),
        ], ""
    if type(model) is nn.Sequential:
        return _sequential_program(model)
    return None, f"model {type(model).__name__} (not an nn.Sequential of supported layers)"


def _check_model(model: nn.Module) -> tuple[list[_Op] | None, str]:
    if any(True for _ in model.buffers()):
        return None, f"model {type(model).__name__} has buffers (e.g. BatchNorm statistics)"
    if not all(p.requires_grad for p in model.parameters()):
        return None, "model has frozen parameters (requires_grad=False)"
    if not all(p.dtype == torch.float32 for p in model.parameters()):
        return None, "model parameters are not float32"
    return model_program(model)


def can_batch(model_fn: ModelFn, optimizer: Any) -> tuple[bool, str]:
    """``(True, "")`` when the engine can train ``model_fn()``'s clients with this optimizer
    (a ``params -> Optimizer`` callable or an :class:`OptimizerSpec`), else
    ``(False, reason)``. Builds one model (under a forked RNG: the caller's random state is
    left alone)."""
    with torch.random.fork_rng(devices=[]):
        model = model_fn()
    if not isinstance(model, nn.Module):
        return False, f"model_fn() returned a {type(model).__name__}, not an nn.Module"
    program, why = _check_model(model)
    if program is None:
        return False, why
    spec, why = optimizer_spec(optimizer)
    if spec is None:
        return False, why
    return True, ""


_NOTED: set[str] = set()


def note_fallback(reason: str, log: Callable[[str], None] | None = None) -> None:
    """Say once per process and reason that clients run one at a time (``log`` or a
    ``RuntimeWarning``)."""
    if reason in _NOTED:
        return
    _NOTED.add(reason)
    message = f"fedp13n engine: training clients one at a time (not batched): {reason}."
    if log is not None:
        log(message)
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def engine_or_none(
    model_fn: ModelFn,
    optimizers: Sequence[Any],
    *,
    log: Callable[[str], None] | None = None,
    **engine_kwargs: Any,
) -> MultiClientEngine | None:
    """A :class:`MultiClientEngine` for ``model_fn`` when it and every optimizer in
    ``optimizers`` can be batched; else ``None`` after saying why once
    (:func:`note_fallback`), and the caller runs its per-client path."""
    for opt in optimizers or [OptimizerSpec("sgd", 0.0)]:
        ok, why = can_batch(model_fn, opt)
        if not ok:
            note_fallback(why, log)
            return None
    return MultiClientEngine(model_fn, **engine_kwargs)


# -- client randomness, as the per-client paths draw it ---------------------------------------
def fedavg_generators(
    seed: int, round_num: int, client_key: Any
) -> tuple[torch.Generator, np.random.Generator]:
    """The dropout generator and the shuffling generator of a FedAvg client, seeded as
    :class:`fedp13n.algorithms.client_update.ClientWork` seeds them."""
    g = torch.Generator().manual_seed(derive_seed(seed, "fedavg", round_num, client_key))
    return g, derive_rng(seed, "fedavg-shuffle", round_num, client_key)


def p13n_generator(model_fn: ModelFn, seed: int, client_id: str, name: str) -> torch.Generator:
    """The torch generator in the state the per-client personalization path has when a
    strategy starts: seeded with ``derive_seed(seed, "p13n", client_id, name)``, then
    advanced past ``model_fn()``'s initialisation (``_evaluate_client`` builds the fresh
    model after seeding), which is why this builds one model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "p13n", client_id, name))
        model_fn()
        state = torch.get_rng_state()
    g = torch.Generator()
    g.set_state(state)
    return g


@dataclass(frozen=True)
class StrategySpec:
    """A fine-tuning strategy as :func:`fedp13n.personalization.build_personalize_fn`
    configures it (cross-entropy loss)."""

    name: str
    optimizer: OptimizerSpec
    batch_size: int
    num_epochs: int
    num_epochs_per_eval: int = 1
    shuffle: bool = True


def strategy_from_builder(name: str, builder: Any) -> tuple[StrategySpec | None, str]:
    """Read a strategy builder whose strategy is TFF's fine-tuning
    (``build_personalize_fn``, directly or through the strategy registry's ``finetune`` /
    ``adam_recommended``) into a :class:`StrategySpec`, or ``(None, reason)`` for any other
    strategy (it then runs per client). The built strategy says what it is: its
    ``fedp13n_finetune`` attribute holds its settings."""
    try:
        with torch.random.fork_rng(devices=[]):
            built = builder()
    except Exception as e:  # a broken builder fails in the per-client path, with context
        return None, f"strategy {name!r} could not be built ({type(e).__name__})"
    a = getattr(built, "fedp13n_finetune", None)
    if not isinstance(a, dict):
        return None, f"strategy {name!r} is not TFF's fine-tuning (build_personalize_fn)"
    if a.get("loss_fn") is not F.cross_entropy:
        return None, f"strategy {name!r} has a loss other than F.cross_entropy"
    if a.get("eval_batch_size") != EVAL_BATCH_SIZE:
        return None, f"strategy {name!r} evaluates with another batch size"
    spec, why = optimizer_spec(a["optimizer_fn"])
    if spec is None:
        return None, f"strategy {name!r}: {why}"
    return StrategySpec(
        name, spec, a["batch_size"], a["num_epochs"], a["num_epochs_per_eval"], a["shuffle"]
    ), ""


# -- results --------------------------------------------------------------------------------
@dataclass
class ClientResult:
    """One FedAvg client's result, the fields of ``ClientOutput`` (``ClientOutput(**vars(r))``):
    ``delta`` = initial - trained (``None`` when not finite), no buffers."""

    delta: dict[str, torch.Tensor] | None
    buffers: dict[str, torch.Tensor] | None
    num_examples: int
    num_trained: int
    loss_sum: float
    metric_sum: float
    finite: bool


# -- data on the device -----------------------------------------------------------------------
class _DeviceData:
    """Several clients' examples concatenated on a device, plus one all-zero padding row
    (index ``pad``). uint8 features stay bytes and are converted by lookup per batch.
    Datasets already resident on the device (:meth:`ClientDataset.to`, e.g. from a
    ``ClientData`` kept there) are concatenated there: nothing crosses from the host."""

    def __init__(self, datasets: Sequence[ClientDataset], device: torch.device) -> None:
        self.sizes = [len(d) for d in datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        if (
            datasets
            and all(_resident_on(d, device) for d in datasets)
            and len({d.resident[0].dtype for d in datasets}) == 1  # type: ignore[index]
        ):
            self._from_resident(datasets, device)
            return
        xs = [np.asarray(d.x) for d in datasets]
        ys = [np.asarray(d.y) for d in datasets]
        rows = {x.shape[1:] for x in xs if len(x)}
        if len(rows) > 1:
            raise ValueError(
                f"the clients' examples have different shapes {sorted(rows)}; give every "
                "client features of one shape."
            )
        row = next(iter(rows), xs[0].shape[1:])
        if len({x.dtype for x in xs if len(x)}) > 1:
            # uint8 pixels (k/255) beside floats: each becomes what a model sees, float32
            xs = [features_to_tensor(x).float().numpy() for x in xs]
        dtype = next((x.dtype for x in xs if len(x)), xs[0].dtype)
        ydtype = next((y.dtype for y in ys if len(y)), ys[0].dtype)
        if np.issubdtype(ydtype, np.floating):
            raise ValueError("the engine trains classifiers: labels must be integers")
        x = np.concatenate([*[a.astype(dtype, copy=False) for a in xs], np.zeros((1, *row), dtype)])
        y = np.concatenate([*[a.astype(np.int64, copy=False) for a in ys], np.zeros(1, np.int64)])
        self.pad = len(y) - 1
        self.uint8 = x.dtype == np.uint8
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        if not self.uint8:
            self.x = self.x.float()
        self.y = torch.from_numpy(y).to(device)
        self.lut = torch.from_numpy(UINT8_TO_UNIT).to(device) if self.uint8 else None

    def _from_resident(self, datasets: Sequence[ClientDataset], device: torch.device) -> None:
        xs = [d.resident[0] for d in datasets]  # type: ignore[index]
        ys = [d.resident[1] for d in datasets]  # type: ignore[index]
        if ys[0].is_floating_point():
            raise ValueError("the engine trains classifiers: labels must be integers")
        row, dtype = xs[0].shape[1:], xs[0].dtype
        self.x = torch.cat([*xs, torch.zeros((1, *row), dtype=dtype, device=device)])
        self.y = torch.cat(
            [*(y.long() for y in ys), torch.zeros(1, dtype=torch.long, device=device)]
        )
        self.pad = len(self.y) - 1
        self.uint8 = dtype == torch.uint8
        self.lut = torch.from_numpy(UINT8_TO_UNIT).to(device) if self.uint8 else None

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.x[idx]
        return self.lut[x.long()] if self.uint8 else x


def _resident_on(dataset: ClientDataset, device: torch.device) -> bool:
    d = dataset.device
    return d is not None and d.type == device.type and (d.index or 0) == (device.index or 0)


def _phase_tensors(
    plans: Sequence[Sequence[np.ndarray]], offsets: np.ndarray, pad: int, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """(T, K, B) global example indices (padding -> ``pad``) and (T, K) real batch sizes."""
    steps = max((len(p) for p in plans), default=0)
    idx = np.full((steps, len(plans), batch), pad, dtype=np.int64)
    counts = np.zeros((steps, len(plans)), dtype=np.int64)
    for k, plan in enumerate(plans):
        for t, b in enumerate(plan):
            idx[t, k, : len(b)] = offsets[k] + b
            counts[t, k] = len(b)
    return idx, counts


# -- the batched forward ----------------------------------------------------------------------
def _forward(
    program: Sequence[_Op],
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    *,
    counts: np.ndarray | None,
    generators: Sequence[torch.Generator | None] | None,
) -> torch.Tensor:
    """Logits ``(K, B, classes)`` of the K stacked models on ``x`` ``(K, B, *row)``.

    With ``counts`` (real examples per client) dropout is on and draws each client's masks
    from its generator for its ``counts[k]`` real examples; without, it is off (eval).
    """
    K, B = x.shape[:2]
    h = x
    layout = "raw"  # raw (K, B, *row) | img (B, K*C, H, W) | flat (K, B, F)
    image = False
    for op in program:
        kind = op.kind
        if kind == "image":
            image = True
            continue
        if kind in ("conv", "maxpool") and layout == "raw":
            if image and h.dim() == 4:  # (K, B, H, W) images: one channel
                h = h.unsqueeze(2)
            if h.dim() != 5:
                raise ValueError(f"convolution input must be images, got rows {tuple(h.shape[2:])}")
            # Channels-last (NHWC): oneDNN's fast layout for (grouped) convolutions and
            # pooling on CPUs (3-4x faster than NCHW here), and cuDNN's for tensor cores.
            h = h.transpose(0, 1).reshape(B, -1, *h.shape[3:])
            h = h.contiguous(memory_format=torch.channels_last)
            layout = "img"
        if kind == "conv":
            stride, padding, dilation, bias = op.args
            w = params[f"{op.name}.weight"]
            w = w.reshape(-1, *w.shape[2:]).contiguous(memory_format=torch.channels_last)
            b = params[f"{op.name}.bias"].reshape(-1) if bias else None
            h = F.conv2d(h, w, b, stride, padding, dilation, groups=K)
        elif kind == "maxpool":
            k, s, p = op.args
            h = F.max_pool2d(h, k, s, p)
        elif kind == "relu":
            h = F.relu(h)
        elif kind == "flatten":
            # img: each client's (C, H, W) in row-major order, as torch.flatten(x, 1)
            h = h.reshape(B, K, -1).transpose(0, 1) if layout == "img" else h.reshape(K, B, -1)
            layout = "flat"
        elif kind == "linear":
            if layout == "raw":
                if h.dim() != 3:
                    raise ValueError("a dense layer needs flat rows: add nn.Flatten before it")
                layout = "flat"
            if layout != "flat":
                raise ValueError("a dense layer on images: add nn.Flatten before it")
            w = params[f"{op.name}.weight"].transpose(1, 2)
            if op.args[0]:
                h = torch.baddbmm(params[f"{op.name}.bias"].unsqueeze(1), h, w)
            else:
                h = torch.bmm(h, w)
        elif kind == "dropout":
            if counts is not None:
                h = _dropout(h, op.args[0], layout, counts, generators)
        else:  # pragma: no cover - programs are built above
            raise AssertionError(kind)
    if layout == "img":
        raise ValueError("the model must end with a dense layer (logits)")
    return h


def _dropout(
    h: torch.Tensor,
    p: float,
    layout: str,
    counts: np.ndarray,
    generators: Sequence[torch.Generator | None] | None,
) -> torch.Tensor:
    if p == 0.0:
        return h
    if p == 1.0:
        return h * 0.0
    threshold = round(p * 256)
    if isinstance(generators, _LayerShapes):  # a dry run on the meta device: record
        generators.append((layout, tuple(h.shape)))
        return h
    if isinstance(generators, _StepMasks):  # drawn ahead (the same bytes)
        mask = generators.next_mask().view(h.shape)
        return h * (mask >= threshold).to(h.dtype).mul_(1.0 / (1.0 - p))
    if layout == "img":
        B, KC = h.shape[:2]
        K = len(counts)
        per = (KC // K, *h.shape[2:])
        mask = torch.zeros((B, K, *per), dtype=torch.uint8)
        for k, n in enumerate(counts):
            if n:
                mask[:n, k] = random_bytes(int(n) * math.prod(per), generators[k]).view(n, *per)
        mask = mask.view(h.shape)
    else:
        K, B, Fdim = h.shape
        mask = torch.zeros((K, B, Fdim), dtype=torch.uint8)
        for k, n in enumerate(counts):
            if n:
                mask[k, :n] = random_bytes(int(n) * Fdim, generators[k]).view(n, Fdim)
    # As FastDropout: bool mask -> dtype, times 1 / (1 - p), one multiply.
    scale = (mask.to(h.device) >= threshold).to(h.dtype).mul_(1.0 / (1.0 - p))
    return h * scale


def compute_beside(engine: Any, device: Any, precision: Any) -> tuple[str, str]:
    """The checked ``(device, precision)`` of a builder's per-client path: with an
    ``engine`` (which must be a :class:`MultiClientEngine`), the engine's unless given
    (given and different: a ``ValueError``, see :meth:`MultiClientEngine.match_compute`);
    without, ``"cpu"`` / ``"fp32"`` unless given. One-line errors for an absent device or
    a precision it cannot use."""
    from fedp13n.utils.device import check_compute

    if engine is not None:
        if not isinstance(engine, MultiClientEngine):
            raise TypeError(
                f"engine must be a fedp13n.engine.MultiClientEngine, got {type(engine).__name__}."
            )
        device, precision = engine.match_compute(device, precision)
    return check_compute(device or "cpu", precision or "fp32")


# -- dropout masks drawn ahead ------------------------------------------------------------------
class _LayerShapes(list):
    """``(layout, shape)`` of every dropout layer's input, in forward order, recorded by a
    dry run of the batched forward on the meta device."""


class _StepMasks:
    """One step's masks on the device, handed to the dropout layers in forward order."""

    def __init__(self, masks: list[torch.Tensor]) -> None:
        self._masks = masks
        self._next = 0

    def next_mask(self) -> torch.Tensor:
        mask = self._masks[self._next]
        self._next += 1
        return mask


def default_mask_threads(device: torch.device) -> int:
    """Threads drawing dropout masks ahead: none on a CPU (its cores compute the steps),
    on a GPU up to 8, leaving a core to the main thread."""
    if device.type == "cpu":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


class _MaskPrefetcher:
    """The dropout bytes of every step of a phase, drawn up to ``depth`` steps ahead of the
    forward passes by ``threads`` threads.

    Clients are split into contiguous ranges, one per thread; a thread draws, step after
    step, for each of its clients the bytes of every dropout layer in forward order, for
    the client's real batch size (the rest of the batch is zero, as padding is): exactly
    the sequence the inline draw takes from that client's generator, which no other
    thread touches. Buffers are pinned when the device is a GPU, so the copy to the
    device does not block the main thread.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        counts: np.ndarray,
        layers: Sequence[tuple[str, tuple[int, ...]]],
        threads: int,
        device: torch.device,
        depth: int = 3,
    ) -> None:
        self.T, self.K = counts.shape
        self.counts = counts
        self.generators = list(generators)
        self.device = device
        self.depth = depth
        self.pin = device.type == "cuda"
        # per layer: the buffer's shape, with the client at axis 1 (img) or 0 (flat)
        self.layers = []
        for layout, shape in layers:
            if layout == "img":  # h: (B, K*C, H, W) -> mask (B, K, C, H, W)
                B, KC = shape[:2]
                self.layers.append(("img", (B, self.K, KC // self.K, *shape[2:])))
            else:  # h: (K, B, F)
                self.layers.append(("flat", shape))
        self._cond = threading.Condition()
        self._bufs: dict[int, list[torch.Tensor]] = {}
        self._done: dict[int, int] = {}
        self._consumed = -1
        self._error: BaseException | None = None
        self._stop = False
        n = max(1, min(threads, self.K))
        bounds = np.linspace(0, self.K, n + 1).round().astype(int)
        self._threads = [
            threading.Thread(target=self._run, args=(int(lo), int(hi)), daemon=True)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
            if hi > lo
        ]
        for t in self._threads:
            t.start()

    def _buffers(self, t: int) -> list[torch.Tensor]:  # under the lock
        bufs = self._bufs.get(t)
        if bufs is None:
            bufs = self._bufs[t] = [
                torch.empty(shape, dtype=torch.uint8, pin_memory=self.pin)
                for _, shape in self.layers
            ]
        return bufs

    def _run(self, lo: int, hi: int) -> None:
        try:
            for t in range(self.T):
                with self._cond:
                    self._cond.wait_for(lambda t=t: self._stop or t - self._consumed <= self.depth)
                    if self._stop:
                        return
                    bufs = self._buffers(t)
                for k in range(lo, hi):
                    n = int(self.counts[t, k])
                    for (layout, shape), buf in zip(self.layers, bufs, strict=True):
                        rows = buf[:, k] if layout == "img" else buf[k]  # (B, *per)
                        per = shape[2:]
                        if n:
                            drawn = random_bytes(n * math.prod(per), self.generators[k])
                            rows[:n].copy_(drawn.view(n, *per))
                        if n < len(rows):
                            rows[n:].zero_()
                with self._cond:
                    self._done[t] = self._done.get(t, 0) + 1
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the main thread
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def step(self, t: int) -> _StepMasks:
        """Step ``t``'s masks on the device (steps are taken in order)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._error is not None or self._done.get(t, 0) == len(self._threads)
            )
            if self._error is not None:
                raise RuntimeError(f"drawing dropout masks failed: {self._error}") from self._error
            bufs = self._bufs.pop(t)
            self._done.pop(t)
            self._consumed = t
            self._cond.notify_all()
        if self.device.type != "cpu":
            bufs = [b.to(self.device, non_blocking=self.pin) for b in bufs]
        return _StepMasks(bufs)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()


# -- optimizers on stacked weights --------------------------------------------------------------
class _StackedOptimizer:
    """SGD or Adam over ``(K, ...)`` stacked weights; ``step(grads, active)`` updates only
    the clients with ``active[k]`` (the others keep weights and state untouched)."""

    def __init__(self, spec: OptimizerSpec, params: list[torch.Tensor], K: int) -> None:
        self.spec = spec
        self.params = params
        self.steps = np.zeros(K, dtype=np.int64)
        if spec.kind == "adam":
            self.m = [torch.zeros_like(p) for p in params]
            self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], active: np.ndarray) -> None:
        device = self.params[0].device
        everyone = bool(active.all())  # the common case: no masking needed
        act = torch.from_numpy(active).to(device)
        self.steps += active
        if self.spec.kind == "sgd":
            for p, g in zip(self.params, grads, strict=True):
                if not everyone:
                    g = torch.where(act.view(-1, *([1] * (p.dim() - 1))), g, 0.0)
                p.add_(g, alpha=-self.spec.lr)  # torch.optim.SGD's update
            return
        b1, b2 = self.spec.betas
        step = np.maximum(self.steps, 1).astype(np.float64)
        # Python-float arithmetic as torch.optim.Adam (single tensor), one value per client.
        bc1 = 1.0 - b1**step
        step_size = torch.from_numpy(-(self.spec.lr / bc1)).to(device, torch.float32)
        bc2_sqrt = torch.from_numpy((1.0 - b2**step) ** 0.5).to(device, torch.float32)
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            shape = (-1, *([1] * (p.dim() - 1)))
            a = act.view(shape)
            m = torch.lerp(self.m[i], g, 1 - b1)
            v = torch.addcmul(self.v[i] * b2, g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt.view(shape)).add_(self.spec.eps)
            new = p + step_size.view(shape) * m / denom  # addcdiv: p + value * m / denom
            if everyone:
                self.m[i], self.v[i] = m, v
                p.copy_(new)
            else:
                self.m[i] = torch.where(a, m, self.m[i])
                self.v[i] = torch.where(a, v, self.v[i])
                p.copy_(torch.where(a, new, p))


# -- the engine -------------------------------------------------------------------------------
class MultiClientEngine:
    """Train and evaluate many clients of one model at once (see the module docstring).

    Args:
        model_fn: builds the model (checked with :func:`can_batch`'s rules).
        device: where the stacked weights and the clients' data live (``"cpu"``,
            ``"cuda"``, ``"cuda:N"``, ``"auto"``; see :func:`fedp13n.utils.device.resolve_device`).
        precision: a :class:`fedp13n.utils.device.Precision` (or its name) wrapped around
            every forward/backward; ``None`` is fp32.
        max_clients: the most clients trained together (K); more are run in groups of
            this many, similar sizes together (results do not depend on the grouping).
        eval_examples: examples per evaluation forward, all clients together.
        mask_threads: threads drawing the dropout masks ahead of the steps (see the module
            docstring); 0 draws them inline; default :func:`default_mask_threads` (0 on a
            CPU, up to 8 on a GPU). The numbers do not depend on it.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        device: str | torch.device = "cpu",
        precision: Any = None,
        max_clients: int = 64,
        eval_examples: int = 4096,
        mask_threads: int | None = None,
        deterministic: bool = True,
    ) -> None:
        from fedp13n.utils.device import Precision, resolve_device, resolve_precision, work_device

        if isinstance(model_fn, nn.Module) or not callable(model_fn):
            raise TypeError(
                f"model_fn must be a no-argument function that builds the model (e.g. "
                f"functools.partial(emnist_conv_dropout, num_classes=62)), got a "
                f"{type(model_fn).__name__}."
            )
        self.model_fn = model_fn
        self.device = resolve_device(device)
        if self.device.type == "cuda":  # the same seed, the same numbers (or not: False)
            work_device(self.device, deterministic=deterministic)
        if precision is None or isinstance(precision, str):
            precision = resolve_precision(precision or "fp32", self.device)
        if not isinstance(precision, Precision):
            raise TypeError(f"precision must be a Precision or its name, got {precision!r}.")
        self.precision = precision
        self.max_clients = check_positive_int("max_clients", max_clients)
        self.eval_examples = check_positive_int("eval_examples", eval_examples)
        if mask_threads is None:
            mask_threads = default_mask_threads(self.device)
        self.mask_threads = check_non_negative_int("mask_threads", mask_threads)
        self._shapes: dict[tuple, _LayerShapes] = {}
        with torch.random.fork_rng(devices=[]):
            model = model_fn()
        program, why = _check_model(model)
        if program is None:
            raise ValueError(f"the engine cannot batch this model: {why}.")
        self.program = program
        self.names = [n for n, _ in model.named_parameters()]

    def match_compute(
        self, device: str | torch.device | None, precision: str | None
    ) -> tuple[str, str]:
        """The ``(device, precision)`` of the per-client path beside this engine (for what
        it cannot batch): the engine's when not given; a ``ValueError`` when given and
        different (the two paths would compute differently without a word)."""
        from fedp13n.utils.device import resolve_device

        name = self.precision.name
        if device is not None:
            asked = resolve_device(device)
            if asked.type != self.device.type or (asked.index or 0) != (self.device.index or 0):
                raise ValueError(
                    f"device={str(device)!r} but the engine runs on {self.device}; leave device "
                    "out (it follows the engine) or build the MultiClientEngine on that device."
                )
        if precision is not None and precision != name:
            raise ValueError(
                f"precision={precision!r} but the engine computes in {name}; leave precision "
                "out (it follows the engine) or build the MultiClientEngine with that precision."
            )
        return str(self.device), name

    # -- building blocks --------------------------------------------------------------------
    def _stack(self, weights: Mapping[str, torch.Tensor], K: int) -> list[torch.Tensor]:
        out = []
        for n in self.names:
            w = weights[n].detach().to(self.device, torch.float32).contiguous()
            out.append(w.unsqueeze(0).repeat(K, *([1] * w.dim())).requires_grad_(True))
        return out

    def _dropout_shapes(self, x: torch.Tensor) -> _LayerShapes:
        """The dropout layers' input shapes for a batch shaped as ``x`` (a dry run of the
        batched forward on the meta device, once per shape)."""
        key = tuple(x.shape)
        if key not in self._shapes:
            shapes = _LayerShapes()
            with torch.device("meta"), torch.random.fork_rng(devices=[]):
                model = self.model_fn()  # the parameters' shapes, no memory, no draws
            K = x.shape[0]
            stacked = {n: p.unsqueeze(0).expand(K, *p.shape) for n, p in model.named_parameters()}
            _forward(
                self.program,
                stacked,
                torch.empty(x.shape, device="meta"),
                counts=np.ones(K, dtype=np.int64),
                generators=shapes,
            )
            self._shapes[key] = shapes
        return self._shapes[key]

    def _groups(self, sizes: Sequence[int]) -> list[list[int]]:
        order = sorted(range(len(sizes)), key=lambda i: sizes[i])
        return [order[i : i + self.max_clients] for i in range(0, len(order), self.max_clients)]

    def _train_phase(
        self,
        params: list[torch.Tensor],
        opt: _StackedOptimizer,
        data: _DeviceData,
        plans: Sequence[Sequence[np.ndarray]],
        generators: Sequence[torch.Generator | None],
        batch_size: int,
        stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Run the steps of ``plans`` (one list of batches per client) in lockstep."""
        idx_np, counts = _phase_tensors(plans, data.offsets[:-1], data.pad, batch_size)
        if not len(idx_np):
            return
        idx = torch.from_numpy(idx_np).to(self.device)
        valid = torch.from_numpy(np.arange(batch_size)[None, None, :] < counts[:, :, None]).to(
            self.device
        )
        n_dev = torch.from_numpy(counts).to(self.device)
        named = dict(zip(self.names, params, strict=True))
        prefetch = None
        if self.mask_threads and any(op.kind == "dropout" for op in self.program):
            layers = self._dropout_shapes(data.features(idx[0]))
            if layers:
                prefetch = _MaskPrefetcher(
                    generators, counts, layers, self.mask_threads, self.device
                )
        phase = (idx, valid, n_dev, counts)
        try:
            self._steps(named, params, opt, data, phase, prefetch or generators, batch_size, stats)
        finally:
            if prefetch is not None:
                prefetch.close()

    def _steps(
        self,
        named: dict[str, torch.Tensor],
        params: list[torch.Tensor],
        opt: _StackedOptimizer,
        data: _DeviceData,
        phase: tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray],
        masks_from: _MaskPrefetcher | Sequence[torch.Generator | None],
        batch_size: int,
        stats: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        """The steps of a phase: example indices, validity, real batch sizes (device) and
        counts (host) per step; masks drawn ahead or from the clients' generators."""
        idx, valid, n_dev, counts = phase
        K = counts.shape[1]
        for t in range(len(idx)):
            x = data.features(idx[t])
            y = data.y[idx[t]]
            ahead = isinstance(masks_from, _MaskPrefetcher)
            masks = masks_from.step(t) if ahead else masks_from
            with self.precision:
                logits = _forward(self.program, named, x, counts=counts[t], generators=masks)
                ce = F.cross_entropy(
                    logits.reshape(K * batch_size, -1).float(), y.reshape(-1), reduction="none"
                ).view(K, batch_size)
            vt = valid[t]
            n = n_dev[t]
            loss = torch.where(vt, ce, 0.0).sum(1) / n.clamp(min=1)
            grads = torch.autograd.grad(loss.sum(), params)
            opt.step(grads, counts[t] > 0)
            if stats is not None:
                with torch.no_grad():
                    correct = ((logits.argmax(-1) == y) & vt).sum(1).double()
                    nd = n.double()
                    stats[0].add_(loss.detach().double() * nd)
                    stats[1].add_(torch.where(n > 0, correct / nd.clamp(min=1) * nd, 0.0))

    @torch.no_grad()
    def _evaluate(
        self, params: list[torch.Tensor], data: _DeviceData
    ) -> list[OrderedDict[str, Any]]:
        """``evaluate_fn``'s metrics for each client: num_test_examples, loss, accuracy."""
        K = len(data.sizes)
        named = dict(zip(self.names, params, strict=True))
        chunk = max(1, self.eval_examples // K)
        longest = max(data.sizes, default=0)
        loss_sum = torch.zeros(K, dtype=torch.float64, device=self.device)
        correct = torch.zeros(K, dtype=torch.int64, device=self.device)
        sizes = torch.tensor(data.sizes, device=self.device)
        start = torch.from_numpy(data.offsets[:-1]).to(self.device)
        for s in range(0, longest, chunk):
            pos = torch.arange(s, min(s + chunk, longest), device=self.device)
            ok = pos[None, :] < sizes[:, None]
            idx = torch.where(ok, start[:, None] + pos[None, :], data.pad)
            x, y = data.features(idx), data.y[idx]
            with self.precision:
                logits = _forward(self.program, named, x, counts=None, generators=None)
            ce = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="none"
            ).view(ok.shape)
            loss_sum += torch.where(ok, ce, 0.0).double().sum(1)
            correct += ((logits.argmax(-1) == y) & ok).sum(1)
        out = []
        for k, n in enumerate(data.sizes):
            m: OrderedDict[str, Any] = OrderedDict(num_test_examples=n)
            m["loss"] = float(loss_sum[k]) / n if n else math.nan
            m["accuracy"] = int(correct[k]) / n if n else math.nan
            # TFF's names, as evaluate_fn reports them (its batch size: EVAL_BATCH_SIZE)
            m["sparse_categorical_accuracy"] = m["accuracy"]
            m["num_examples"] = n
            m["num_batches"] = math.ceil(n / EVAL_BATCH_SIZE)
            out.append(m)
        return out

    # -- FedAvg ------------------------------------------------------------------------------
    def fedavg_clients(
        self,
        weights: Mapping[str, torch.Tensor],
        datasets: Sequence[ClientDataset],
        client_keys: Sequence[Any],
        *,
        optimizer: Any,
        epochs: int | None,
        batch_size: int,
        shuffle: bool,
        seed: int,
        round_num: int,
        pipeline: str = DEFAULT_CLIENT_PIPELINE,
        shuffle_buffer: int = 1000,
        max_steps: int | None = None,
    ) -> list[ClientResult]:
        """Local training of FedAvg's clients from ``weights``, as ``ClientWork`` would do
        task by task (same seeds from ``seed``, ``round_num`` and each client key, the same
        :func:`~fedp13n.data.pipeline.batch_plan` of ``pipeline`` / ``max_steps``)."""
        spec, why = optimizer_spec(optimizer)
        if spec is None:
            raise ValueError(f"the engine cannot batch this optimizer: {why}.")
        if len(datasets) != len(client_keys):
            raise ValueError("datasets and client_keys must have the same length.")
        results: list[ClientResult | None] = [None] * len(datasets)
        for group in self._groups([len(d) for d in datasets]):
            K = len(group)
            data = _DeviceData([datasets[i] for i in group], self.device)
            gens, plans = [], []
            for i in group:
                g, rng = fedavg_generators(seed, round_num, client_keys[i])
                gens.append(g)
                plans.append(
                    batch_plan(
                        len(datasets[i]),
                        batch_size,
                        epochs=epochs,
                        shuffle=shuffle,
                        generator=rng,
                        pipeline=pipeline,
                        shuffle_buffer=shuffle_buffer,
                        max_steps=max_steps,
                    )
                )
            params = self._stack(weights, K)
            opt = _StackedOptimizer(spec, params, K)
            stats = (
                torch.zeros(K, dtype=torch.float64, device=self.device),
                torch.zeros(K, dtype=torch.float64, device=self.device),
            )
            # Epochs need no alignment here: one phase with every client's whole plan.
            self._train_phase(params, opt, data, plans, gens, batch_size, stats)
            with torch.no_grad():
                deltas = {
                    n: (weights[n].detach().to(self.device, torch.float32) - p).cpu()
                    for n, p in zip(self.names, params, strict=True)
                }
            loss_sums, metric_sums = stats[0].tolist(), stats[1].tolist()
            for j, i in enumerate(group):
                trained = sum(len(b) for b in plans[j])
                delta = {n: d[j].clone() for n, d in deltas.items()}
                finite = math.isfinite(loss_sums[j]) and all(
                    bool(torch.isfinite(t).all()) for t in delta.values()
                )
                results[i] = ClientResult(
                    delta=delta if finite else None,
                    buffers={} if finite else None,
                    # the weight in the average, as ClientWork gives it
                    num_examples=trained if pipeline == "tff" else len(datasets[i]),
                    num_trained=trained,
                    loss_sum=loss_sums[j],
                    metric_sum=metric_sums[j],
                    finite=finite,
                )
        return results  # type: ignore[return-value]

    # -- personalization -------------------------------------------------------------------
    def personalize(
        self,
        weights: Mapping[str, torch.Tensor],
        clients: Sequence[tuple[str, ClientDataset, ClientDataset]],
        strategies: Sequence[StrategySpec],
        *,
        seed: int,
        baseline: bool = True,
        generator_fn: Callable[[str, str], torch.Generator] | None = None,
    ) -> list[OrderedDict[str, Any]]:
        """Every strategy on every ``(client_id, train, test)`` from the global ``weights``,
        as ``build_personalization_eval`` + ``build_personalize_fn`` compute it: per client an
        ``OrderedDict`` with ``baseline_metrics`` (when ``baseline``) and, per strategy,
        ``epoch_<k>`` metrics and ``num_train_examples``.

        ``generator_fn(client_id, strategy_name)`` gives the torch generator in the state
        the strategy starts with (default: :func:`p13n_generator` with ``seed``); the
        shuffling seed is drawn from it first, then the dropout masks.
        """
        if generator_fn is None:
            generator_fn = functools.partial(p13n_generator, self.model_fn, seed)
        results: list[OrderedDict[str, Any]] = [OrderedDict() for _ in clients]
        for group in self._groups([len(c[1]) for c in clients]):
            K = len(group)
            train = _DeviceData([clients[i][1] for i in group], self.device)
            test = _DeviceData([clients[i][2] for i in group], self.device)
            if baseline:
                base = self._evaluate(self._stack(weights, K), test)
                for j, i in enumerate(group):
                    results[i]["baseline_metrics"] = base[j]
            for strat in strategies:
                outs = self._personalize_group(
                    weights, clients, group, strat, train, test, generator_fn
                )
                for j, i in enumerate(group):
                    results[i][strat.name] = outs[j]
        return results

    def _personalize_group(
        self,
        weights: Mapping[str, torch.Tensor],
        clients: Sequence[tuple[str, ClientDataset, ClientDataset]],
        group: list[int],
        strat: StrategySpec,
        train: _DeviceData,
        test: _DeviceData,
        generator_fn: Callable[[str, str], torch.Generator],
    ) -> list[OrderedDict[str, Any]]:
        K = len(group)
        gens, plans = [], []
        for i in group:
            g = generator_fn(clients[i][0], strat.name)
            rng = None
            if strat.shuffle:  # build_personalize_fn draws the numpy seed first
                rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
            gens.append(g)
            plans.append(
                batch_plan(
                    len(clients[i][1]),
                    strat.batch_size,
                    epochs=strat.num_epochs,
                    shuffle=strat.shuffle,
                    generator=rng,
                )
            )
        per_epoch = [math.ceil(len(clients[i][1]) / strat.batch_size) for i in group]
        params = self._stack(weights, K)
        opt = _StackedOptimizer(strat.optimizer, params, K)
        outs: list[OrderedDict[str, Any]] = [OrderedDict() for _ in group]
        for e in range(strat.num_epochs):
            phase = [p[e * s : (e + 1) * s] for p, s in zip(plans, per_epoch, strict=True)]
            self._train_phase(params, opt, train, phase, gens, strat.batch_size)
            epoch = e + 1
            if epoch % strat.num_epochs_per_eval == 0 or epoch == strat.num_epochs:
                metrics = self._evaluate(params, test)
                for j in range(K):
                    outs[j][f"epoch_{epoch}"] = metrics[j]
        for j, i in enumerate(group):
            outs[j]["num_train_examples"] = len(clients[i][1]) * strat.num_epochs
        return outs
