"""The multi-client engine: K clients trained in lockstep as one batched computation.

Federated clients train small models on small batches (20 examples): one client at a time
leaves a GPU idle, and even a CPU core mostly waits on per-operator overhead. Here the K
clients' weights are stacked along a leading client dimension and the model runs once for
all of them, as :class:`fedp13n.engine.functional.FunctionalModel` computes it:
``torch.func.vmap`` over ``grad_and_value`` of ``functional_call`` (a convolution becomes
one grouped convolution, a dense layer one batched matrix product), for *any*
``nn.Module`` vmap can batch. Each client's dropout masks, drawn from the client's own
generator (:mod:`fedp13n.engine.masks`), enter the call as inputs.

The numbers are those of the one-client-at-a-time path up to float rounding:

* **Example order**: each client's batches are :func:`fedp13n.data.pipeline.batch_plan`
  drawn from the client's own numpy generator, as the per-client path does.
* **Unequal clients**: batches are padded to the batch size and steps to the longest
  client; a padded example has loss weight 0 (no loss, no gradient, dropout mask 0) and a
  client without a batch at a step skips the optimizer step entirely (no Adam moment or
  step count moves). Epochs are aligned (every client's epoch ``e`` runs in the same
  block of steps), so evaluation after an epoch sees every client after its epoch.
* **Dropout** (:class:`~fedp13n.models.layers.FastDropout`, and ``nn.Dropout`` on a CPU):
  each client has a ``torch.Generator`` seeded as the per-client path seeds torch's global
  one, and at every step its masks are drawn for its real batch size, dropout call after
  dropout call in forward order: the same bytes the per-client path draws. On a GPU a pool
  of ``mask_threads`` threads draws them a few steps ahead (the same bytes).
* **Optimizers** are implemented on the stacked weights with per-client step masks:
  SGD ``p -= lr * g`` and Adam with torch's formula (``torch.optim.Adam``'s single-tensor
  code: ``lerp``/``addcmul`` moments, bias corrections per client step count).

What is batched (:func:`can_batch` says, with the reason when not): models whose layers
vmap batches (see :mod:`fedp13n.engine.functional` for what is refused: BatchNorm in
training, recurrent modules, buffers, frozen parameters, what vmap rejects in a dry run
on one example); cross-entropy loss on integer labels, one per example or one per
position (a sequence: each example's loss the mean over its positions, the accuracy
counted over its positions, leaving the task's ignored ids out); ``torch.optim.SGD`` without
momentum, weight decay, nesterov or maximize, and ``torch.optim.Adam`` without weight
decay, amsgrad or maximize. Anything else runs the caller's per-client path
(``fallback=``), with one warning per reason and process.

Data: each client's examples are moved to the engine's device once per call
(FedAvg round, personalization evaluation), uint8 pixels as bytes, converted on the
device by the lookup table of :data:`fedp13n.data.client_data.UINT8_TO_UNIT` (the exact
float32 values of the per-client path); integer features (token ids) stay integers.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedp13n.client.program import EVAL_BATCH_SIZE
from fedp13n.client.result import ClientOutput
from fedp13n.data.client_data import UINT8_TO_UNIT, ClientDataset, features_to_tensor
from fedp13n.data.pipeline import DEFAULT_CLIENT_PIPELINE, batch_plan
from fedp13n.engine.functional import FunctionalModel, NotBatchable, example_losses, refusal
from fedp13n.engine.masks import MaskPrefetcher, default_mask_threads, draw_masks
from fedp13n.models.objectives import engine_ignore_ids
from fedp13n.utils.checks import check_non_negative_int, check_positive_int
from fedp13n.utils.device import Compute, Precision, work_device
from fedp13n.utils.seeding import derive_rng, derive_seed
from fedp13n.utils.types import ModelFn

__all__ = [
    "MultiClientEngine",
    "OptimizerSpec",
    "StrategySpec",
    "can_batch",
    "engine_or_none",
    "fedavg_generators",
    "note_fallback",
    "optimizer_spec",
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


#: The optimizer settings the engine does not implement (each must be 0 / False).
_UNBATCHED_SETTINGS = {
    "sgd": ("momentum", "weight_decay", "nesterov", "maximize"),
    "adam": ("weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"),
}


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
    kind = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam"}.get(type(opt))
    if kind is None:
        return None, f"optimizer {type(opt).__name__} (only SGD and Adam are batched)"
    for key in _UNBATCHED_SETTINGS[kind]:
        if g.get(key):
            note = "only plain SGD is batched" if kind == "sgd" else "not batched"
            return None, f"{type(opt).__name__} with {key}={g[key]!r} ({note})"
    if kind == "sgd":
        return OptimizerSpec("sgd", float(g["lr"])), ""
    betas = tuple(float(b) for b in g["betas"])
    return OptimizerSpec("adam", float(g["lr"]), betas, float(g["eps"])), ""


def can_batch(model_fn: ModelFn, optimizer: Any, *, device: Any = "cpu") -> tuple[bool, str]:
    """``(True, "")`` when the engine can train ``model_fn()``'s clients on ``device`` with
    this optimizer (a ``params -> Optimizer`` callable or an :class:`OptimizerSpec`), else
    ``(False, reason)``. Builds one model (under a forked RNG: the caller's random state is
    left alone) and, when it declares an ``input_spec``, dry-runs it batched on one example
    (without, the engine dry-runs on the first data it gets)."""
    why = refusal(model_fn, torch.device(device)) or optimizer_spec(optimizer)[1]
    return not why, why


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
    device = engine_kwargs.get("device", "cpu")
    if device == "auto":
        from fedp13n.utils.device import resolve_device

        device = resolve_device(device)
    for opt in optimizers or [OptimizerSpec("sgd", 0.0)]:
        ok, why = can_batch(model_fn, opt, device=device)
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
    #: target ids its accuracy leaves out (its loss's :class:`Accuracy`)
    ignore_ids: tuple[int, ...] = ()


def strategy_from_builder(name: str, builder: Any) -> tuple[StrategySpec | None, str]:
    """Read a strategy builder whose strategy is TFF's fine-tuning into a
    :class:`StrategySpec`, or ``(None, reason)`` for any other strategy (it then runs per
    client). The strategy says what it is: a strategy object (the registry's
    ``FineTune``, ``AdamRecommended``, ...; the builder itself, or the owner of the
    bound method a builder such as ``functools.partial(build_personalize_fn, ...)``
    returns) has ``finetune_settings()``, its settings when it is plain fine-tuning."""
    strategy = builder
    if not callable(getattr(builder, "finetune_settings", None)):
        try:
            with torch.random.fork_rng(devices=[]):
                built = builder()
        except Exception as e:  # a broken builder fails in the per-client path, with context
            return None, f"strategy {name!r} could not be built ({type(e).__name__})"
        strategy = getattr(built, "__self__", None)
    settings = getattr(strategy, "finetune_settings", None)
    a = settings() if callable(settings) else None
    if not isinstance(a, dict):
        return None, f"strategy {name!r} is not TFF's fine-tuning (build_personalize_fn)"
    ignore_ids = engine_ignore_ids(a.get("loss_fn"))
    if ignore_ids is None:
        return None, f"strategy {name!r} has a loss other than F.cross_entropy"
    if a.get("eval_batch_size") != EVAL_BATCH_SIZE:
        return None, f"strategy {name!r} evaluates with another batch size"
    spec, why = optimizer_spec(a["optimizer_fn"])
    if spec is None:
        return None, f"strategy {name!r}: {why}"
    return StrategySpec(
        name, spec, a["batch_size"], a["num_epochs"], a["num_epochs_per_eval"], a["shuffle"],
        ignore_ids,
    ), ""  # fmt: skip


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
            # e.g. uint8 pixels (k/255) beside floats: each becomes what a model sees
            xs = [features_to_tensor(x).numpy() for x in xs]
            if any(np.issubdtype(x.dtype, np.floating) for x in xs):
                xs = [x.astype(np.float32, copy=False) for x in xs]
        dtype = next((x.dtype for x in xs if len(x)), xs[0].dtype)
        ydtype = next((y.dtype for y in ys if len(y)), ys[0].dtype)
        if np.issubdtype(ydtype, np.floating):
            raise ValueError("the engine trains classifiers: labels must be integers")
        x = np.concatenate([*[a.astype(dtype, copy=False) for a in xs], np.zeros((1, *row), dtype)])
        yrow = next((y.shape[1:] for y in ys if len(y)), ys[0].shape[1:])  # () or a sequence
        y = np.concatenate(
            [*[a.astype(np.int64, copy=False) for a in ys], np.zeros((1, *yrow), np.int64)]
        )
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        if self.x.is_floating_point():
            self.x = self.x.float()
        self.y = torch.from_numpy(y).to(device)
        self._finish(device)

    def _from_resident(self, datasets: Sequence[ClientDataset], device: torch.device) -> None:
        xs = [d.resident[0] for d in datasets]  # type: ignore[index]
        ys = [d.resident[1] for d in datasets]  # type: ignore[index]
        if ys[0].is_floating_point():
            raise ValueError("the engine trains classifiers: labels must be integers")
        row, dtype = xs[0].shape[1:], xs[0].dtype
        self.x = torch.cat([*xs, torch.zeros((1, *row), dtype=dtype, device=device)])
        self.y = torch.cat(
            [
                *(y.long() for y in ys),
                torch.zeros((1, *ys[0].shape[1:]), dtype=torch.long, device=device),
            ]
        )
        self._finish(device)

    def _finish(self, device: torch.device) -> None:
        """The padding row's index and the uint8 lookup table, once ``x`` and ``y`` hold
        the examples."""
        self.pad = len(self.y) - 1
        self.uint8 = self.x.dtype == torch.uint8
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
        device: where the stacked weights and the clients' data live (``"cpu"``, the
            default, ``"cuda"``, ``"cuda:N"``, ``"auto"``; see
            :func:`fedp13n.utils.device.resolve_device`).
        precision: the name (or :class:`fedp13n.utils.device.Precision`) of the precision
            wrapped around every forward/backward; ``None`` is fp32.
        deterministic: deterministic GPU kernels (default True).
        compute: instead of ``device``, ``precision`` and ``deterministic``, a
            :class:`fedp13n.utils.device.Compute` made by ``Compute.resolve`` (its
            ``engine`` ignored); kept as :attr:`compute`, which builders given this engine
            follow.
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
        device: str | torch.device | None = None,
        precision: Any = None,
        max_clients: int = 64,
        eval_examples: int = 4096,
        mask_threads: int | None = None,
        deterministic: bool = True,
        compute: Compute | None = None,
    ) -> None:

        if isinstance(model_fn, nn.Module) or not callable(model_fn):
            raise TypeError(
                f"model_fn must be a no-argument function that builds the model (e.g. "
                f"functools.partial(emnist_conv_dropout, num_classes=62)), got a "
                f"{type(model_fn).__name__}."
            )
        self.model_fn = model_fn
        if isinstance(precision, Precision):
            precision = precision.name
        compute = Compute.given(
            compute, device=device, precision=precision, deterministic=deterministic
        )
        self.compute = compute.without_engine()
        self.device = compute.torch_device
        if self.device.type == "cuda":  # the same seed, the same numbers (or not: False)
            work_device(compute.device, deterministic=compute.deterministic)
        self.precision = Precision(compute.precision, self.device.type)
        self.max_clients = check_positive_int("max_clients", max_clients)
        self.eval_examples = check_positive_int("eval_examples", eval_examples)
        if mask_threads is None:
            mask_threads = default_mask_threads(self.device)
        self.mask_threads = check_non_negative_int("mask_threads", mask_threads)
        with torch.random.fork_rng(devices=[]):
            model = model_fn()
        try:
            self.fn = FunctionalModel(model, self.device)
        except NotBatchable as e:
            raise ValueError(f"the engine cannot batch this model: {e}.") from None
        self.names = self.fn.names

    # -- building blocks --------------------------------------------------------------------
    def _stack(self, weights: Mapping[str, torch.Tensor], K: int) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.names:
            w = weights[n].detach().to(self.device, torch.float32)
            out[n] = w.unsqueeze(0).repeat(K, *([1] * w.dim()))  # a copy, also for K = 1
        return out

    def _probe(self, data: _DeviceData) -> list:
        """The model's dropout calls on this data's examples, after the dry run (a
        one-line ``ValueError`` when vmap rejects the model)."""
        row = tuple(data.x.shape[1:])
        dtype = torch.float32 if data.uint8 else data.x.dtype
        try:
            return self.fn.probe(row, dtype, tuple(data.y.shape[1:]))
        except NotBatchable as e:
            raise ValueError(f"the engine cannot batch this model: {e}.") from None

    def _groups(self, sizes: Sequence[int]) -> list[list[int]]:
        order = sorted(range(len(sizes)), key=lambda i: sizes[i])
        return [order[i : i + self.max_clients] for i in range(0, len(order), self.max_clients)]

    def _train_phase(
        self,
        params: dict[str, torch.Tensor],
        opt: _StackedOptimizer,
        data: _DeviceData,
        plans: Sequence[Sequence[np.ndarray]],
        generators: Sequence[torch.Generator],
        batch_size: int,
        stats: torch.Tensor | None = None,
    ) -> None:
        """Run the steps of ``plans`` (one list of batches per client) in lockstep."""
        idx_np, counts = _phase_tensors(plans, data.offsets[:-1], data.pad, batch_size)
        if not len(idx_np):
            return
        layers = self._probe(data)
        idx = torch.from_numpy(idx_np).to(self.device)
        valid = torch.from_numpy(np.arange(batch_size)[None, None, :] < counts[:, :, None]).to(
            self.device
        )
        n_dev = torch.from_numpy(counts).to(self.device)
        prefetch = None
        if self.mask_threads and layers:
            prefetch = MaskPrefetcher(
                generators, counts, layers, batch_size, self.mask_threads, self.device
            )

        def masks(t: int) -> list[torch.Tensor]:
            if prefetch is not None:
                return prefetch.step(t)
            return draw_masks(layers, generators, counts[t], batch_size, self.device)

        try:
            self._steps(params, opt, data, (idx, valid, n_dev, counts), masks, stats)
        finally:
            if prefetch is not None:
                prefetch.close()

    def _steps(
        self,
        params: dict[str, torch.Tensor],
        opt: _StackedOptimizer,
        data: _DeviceData,
        phase: tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray],
        masks: Callable[[int], list[torch.Tensor]],
        stats: torch.Tensor | None,
    ) -> None:
        """The steps of a phase: example indices, validity, real batch sizes (device) and
        counts (host) per step; ``masks(t)`` gives step ``t``'s dropout masks."""
        idx, valid, n_dev, counts = phase
        for t in range(len(idx)):
            x = data.features(idx[t])
            y = data.y[idx[t]]
            with self.precision:
                grads, loss, (correct, counted) = self.fn.train_step(
                    params, x, y, valid[t], n_dev[t], masks(t)
                )
            opt.step([grads[n] for n in self.names], counts[t] > 0)
            if stats is not None:  # batch means times batch sizes, as ClientWork sums them
                with torch.no_grad():
                    n = n_dev[t]
                    nd = n.double()
                    stats[0].add_(loss.double() * nd)
                    frac = correct.double() / counted.double().clamp(min=1)
                    stats[1].add_(torch.where(n > 0, frac * nd, 0.0))

    @torch.no_grad()
    def _evaluate(
        self, params: dict[str, torch.Tensor], data: _DeviceData
    ) -> list[OrderedDict[str, Any]]:
        """``evaluate_fn``'s metrics for each client: num_test_examples, loss (the mean of
        its examples' losses), accuracy (right over counted targets, all batches)."""
        K = len(data.sizes)
        if max(data.sizes, default=0):
            self._probe(data)
        chunk = max(1, self.eval_examples // K)
        longest = max(data.sizes, default=0)
        loss_sum = torch.zeros(K, dtype=torch.float64, device=self.device)
        correct = torch.zeros(K, dtype=torch.int64, device=self.device)
        counted = torch.zeros(K, dtype=torch.int64, device=self.device)
        sizes = torch.tensor(data.sizes, device=self.device)
        start = torch.from_numpy(data.offsets[:-1]).to(self.device)
        for s in range(0, longest, chunk):
            pos = torch.arange(s, min(s + chunk, longest), device=self.device)
            ok = pos[None, :] < sizes[:, None]
            idx = torch.where(ok, start[:, None] + pos[None, :], data.pad)
            x, y = data.features(idx), data.y[idx]
            with self.precision:
                logits = self.fn.logits(params, x)
            ce = example_losses(logits.flatten(0, 1), y.flatten(0, 1)).view(ok.shape)
            loss_sum += torch.where(ok, ce, 0.0).double().sum(1)
            keep = ok.view(ok.shape + (1,) * (y.dim() - 2)).expand(y.shape)
            for i in self.fn.ignore_ids:
                keep = keep & (y != i)
            correct += ((logits.argmax(2) == y) & keep).flatten(1).sum(1)
            counted += keep.flatten(1).sum(1)
        out = []
        for k, n in enumerate(data.sizes):
            m: OrderedDict[str, Any] = OrderedDict(num_test_examples=n)
            m["loss"] = float(loss_sum[k]) / n if n else math.nan
            c = int(counted[k])
            m["accuracy"] = int(correct[k]) / c if c else math.nan
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
        ignore_ids: Sequence[int] = (),
    ) -> list[ClientOutput]:
        """Local training of FedAvg's clients from ``weights``, as ``ClientWork`` would do
        task by task (same seeds from ``seed``, ``round_num`` and each client key, the same
        :func:`~fedp13n.data.pipeline.batch_plan` of ``pipeline`` / ``max_steps``); the
        training accuracy leaves targets in ``ignore_ids`` out (the task's
        :class:`~fedp13n.models.objectives.Accuracy`)."""
        self.fn.ignore_ids = tuple(int(i) for i in ignore_ids)
        spec, _ = optimizer_spec(optimizer)  # one the builder found batchable (can_batch)
        steps = dict(epochs=epochs, shuffle=shuffle, pipeline=pipeline,
                     shuffle_buffer=shuffle_buffer, max_steps=max_steps)  # fmt: skip
        results: list[ClientOutput | None] = [None] * len(datasets)
        for group in self._groups([len(d) for d in datasets]):
            K = len(group)
            data = _DeviceData([datasets[i] for i in group], self.device)
            gens, plans = [], []
            for i in group:
                g, rng = fedavg_generators(seed, round_num, client_keys[i])
                gens.append(g)
                plans.append(batch_plan(len(datasets[i]), batch_size, generator=rng, **steps))
            params = self._stack(weights, K)
            opt = _StackedOptimizer(spec, list(params.values()), K)
            stats = torch.zeros(2, K, dtype=torch.float64, device=self.device)
            # Epochs need no alignment here: one phase with every client's whole plan.
            self._train_phase(params, opt, data, plans, gens, batch_size, stats)
            with torch.no_grad():
                deltas = {
                    n: (weights[n].detach().to(self.device, torch.float32) - p).cpu()
                    for n, p in params.items()
                }
            loss_sums, metric_sums = stats[0].tolist(), stats[1].tolist()
            for j, i in enumerate(group):
                trained = sum(len(b) for b in plans[j])
                delta = {n: d[j].clone() for n, d in deltas.items()}
                finite = math.isfinite(loss_sums[j]) and all(
                    bool(torch.isfinite(t).all()) for t in delta.values()
                )
                results[i] = ClientOutput(
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
        ignore_ids: Sequence[int] = (),
    ) -> list[OrderedDict[str, Any]]:
        """Every strategy on every ``(client_id, train, test)`` from the global ``weights``,
        as ``build_personalization_eval`` + ``build_personalize_fn`` compute it: per client an
        ``OrderedDict`` with ``baseline_metrics`` (when ``baseline``) and, per strategy,
        ``epoch_<k>`` metrics and ``num_train_examples``.

        A strategy on a client starts from ``torch.Generator().manual_seed(derive_seed(seed,
        "p13n", client_id, name))``, as the per-client path seeds torch's global generator
        once the fresh model holds the weights; the shuffling seed is drawn from it first,
        then the dropout masks. The baseline's accuracy leaves targets in ``ignore_ids``
        out, each strategy's those of its :attr:`StrategySpec.ignore_ids`.
        """
        results: list[OrderedDict[str, Any]] = [OrderedDict() for _ in clients]
        for group in self._groups([len(c[1]) for c in clients]):
            K = len(group)
            train = _DeviceData([clients[i][1] for i in group], self.device)
            test = _DeviceData([clients[i][2] for i in group], self.device)
            if baseline:
                self.fn.ignore_ids = tuple(int(i) for i in ignore_ids)
                base = self._evaluate(self._stack(weights, K), test)
                for j, i in enumerate(group):
                    results[i]["baseline_metrics"] = base[j]
            for strat in strategies:
                outs = self._personalize_group(weights, clients, group, strat, train, test, seed)
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
        seed: int,
    ) -> list[OrderedDict[str, Any]]:
        K = len(group)
        self.fn.ignore_ids = strat.ignore_ids
        gens, plans = [], []
        for i in group:
            g = torch.Generator().manual_seed(derive_seed(seed, "p13n", clients[i][0], strat.name))
            rng = None
            if strat.shuffle:  # build_personalize_fn draws the numpy seed first
                rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
            gens.append(g)
            n, b = len(clients[i][1]), strat.batch_size
            plans.append(
                batch_plan(n, b, epochs=strat.num_epochs, shuffle=strat.shuffle, generator=rng)
            )
        per_epoch = [math.ceil(len(clients[i][1]) / strat.batch_size) for i in group]
        params = self._stack(weights, K)
        opt = _StackedOptimizer(strat.optimizer, list(params.values()), K)
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
