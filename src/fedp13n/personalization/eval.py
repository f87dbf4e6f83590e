"""Personalization evaluation: TFF's ``build_personalization_eval`` on fedp13n executors.

Reproduces the evaluation of Jiang et al. 2019, "Improving Federated Learning
Personalization via Model Agnostic Meta Learning" (TFF's
``learning/personalization_eval.py``): every client evaluates the global model on its test
data (``baseline_metrics``), then lets every personalization strategy fine-tune a copy of
the global model on its train data and report metrics; the metrics of at most
``max_num_samples`` clients, sampled without replacement, are collected with one list per
metric, position ``i`` = the same client in every list.

As TFF (its ``personalization_eval_test.py``): ``model_fn`` is called while the
evaluation is built (a ``model_fn`` that does not return an ``nn.Module`` is a
``TypeError`` at build time); client inputs must have exactly the keys ``train_data`` and
``test_data`` (plus fedp13n's optional ``context`` and ``client_id``), else ``TypeError``;
every client's data must fit the model (its declared ``input_spec``, see
:class:`~fedp13n.models.InputSpec`; without one, a dry forward of one example), else a
``TypeError`` naming both shapes; strategies may have TFF's current signature
``personalize_fn(model, train_data, test_data)`` or the older one with ``context``
(inspected once, at build time); no clients at all give the result structure with empty
lists (see :func:`build_personalization_eval`).

Differences from TFF, each for a reason (README: "Where fedp13n differs from TFF"):

* the sample is drawn with reservoir sampling from ``derive_rng(seed, "p13n-sample")``
  *before* any work, so only the sampled clients are evaluated and the same seed gives
  the same sample; sampled clients keep their input order;
* the result also carries the sampled clients' ids and the seed
  (:class:`~fedp13n.personalization.result.PersonalizationResult`);
* clients run as tasks of an :class:`~fedp13n.execution.Executor` (in parallel); every
  strategy of every client starts from a fresh ``model_fn()`` loaded with the global
  weights, a freshly built strategy and torch's RNG seeded from
  ``(seed, "p13n", client_id, strategy name)``, so no optimizer state, batch-norm buffer or
  random stream leaks between strategies or clients, and the numbers are bit-identical
  whatever the executor and the number of workers;
* for no clients, the structure of the result is what the baseline and every strategy
  return on a *one-example* client built from the model's ``input_spec`` (TFF reads it
  from the static type of its metrics), every value replaced by an empty list; user code
  is never handed a client without examples. It is derived once, at the first call with
  no clients, and kept. A model without an ``input_spec`` gives an empty mapping for
  every key, since the structure (e.g. whether ``accuracy`` is reported) depends on the
  label dtype, which only a spec or data can tell;
* a PyTorch module has no input spec of its own: fedp13n's models declare one, a user's
  model may; without one only what a dry forward of one example shows can be checked.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import numbers
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedp13n.data.client_data import ClientDataset
from fedp13n.execution.base import Executor, LocalRef, SharedRef
from fedp13n.execution.in_process import InProcessExecutor
from fedp13n.models.spec import InputSpec, check_model_fn, input_spec_of
from fedp13n.personalization.inputs import (
    check_client_input,
    check_fits_model,
    one_example_dataset,
)
from fedp13n.personalization.result import (
    BASELINE_KEY,
    META_KEYS,
    PersonalizationResult,
    scalar_tree,
    stack_trees,
)
from fedp13n.utils.device import Compute
from fedp13n.utils.seeding import derive_rng, derive_seed
from fedp13n.utils.types import ModelFn


def build_personalization_eval(
    model_fn: ModelFn,
    personalize_fn_dict: Mapping[str, Callable[[], Callable[..., Mapping[str, Any]]]],
    baseline_evaluate_fn: Callable[[nn.Module, ClientDataset], Mapping[str, Any]],
    max_num_samples: int = 100,
    *,
    max_num_clients: int | None = None,
    seed: int | None = None,
    executor: Executor | None = None,
    engine: Any = None,
    precision: str | None = None,
    device: str | None = None,
    deterministic: bool = True,
    compute: Compute | None = None,
) -> Callable[[Mapping[str, torch.Tensor], Iterable[Mapping[str, Any]]], PersonalizationResult]:
    """Build ``personalization_eval(model_weights, client_inputs) -> PersonalizationResult``.

    Args:
        model_fn: no-argument builder of a fresh ``nn.Module`` (called once here, as TFF
            does, and in the workers, so it must be picklable with cloudpickle; lambdas
            and partials are fine). The model may declare ``input_spec``
            (:class:`~fedp13n.models.InputSpec`) for the data check.
        personalize_fn_dict: strategy name -> no-argument builder of a strategy
            ``personalize_fn(model, train_data, test_data)`` (TFF's signature since 2023)
            or ``personalize_fn(model, train_data, test_data, context)`` (the older one,
            which gets the client input's ``context``), that trains ``model`` (already
            holding the global weights) and returns a possibly nested mapping of scalar
            metrics (e.g. :func:`build_personalize_fn`). Each builder is called once here
            and its strategy's signature inspected.
        baseline_evaluate_fn: ``(model, test_data) -> metrics`` for the global model
            (e.g. :func:`evaluate_fn`); the model is in eval mode.
        max_num_samples: the most clients whose metrics are collected; all of them when
            there are fewer.
        max_num_clients: TFF 0.87's name for ``max_num_samples``
            (``build_personalization_eval_computation(..., max_num_clients=100)``): either
            may be given, not both with different values.
        seed: what the sample and the per-client randomness derive from; ``None`` draws a
            fresh one at every call, recorded in the result's ``seed``.
        executor: where client work runs; ``None`` runs it in this process.
        engine: a :class:`fedp13n.engine.MultiClientEngine`: the baseline and every
            strategy that is TFF's fine-tuning (``build_personalize_fn``, SGD or Adam) run
            for all clients at once as one batched computation, the same numbers up to
            float rounding; other strategies (and a ``baseline_evaluate_fn`` other than
            :func:`evaluate_fn`) run per client on ``executor``, said once.
        precision: ``"fp32"`` (default; with an engine, the engine's), ``"bf16"``
            (autocast, float32 master weights) or, on CUDA, ``"tf32"``, around each
            client's baseline and strategies (the per-client path).
        device: where the per-client path runs (``"cpu"``, the default; ``"cuda"``,
            ``"cuda:N"``, ``"mps"``; with an engine, the engine's device, and another one
            is a ``ValueError``): each sampled client's model is built on the CPU (the same
            initialisation), moved there, and its train and test data are copied there
            once; strategies get a model on the device and data resident on it
            (:meth:`ClientDataset.batch` cuts batches where the model is). Worker processes
            an executor pinned to GPUs use their own GPU.
        deterministic: deterministic GPU kernels (default True; False: faster, not
            reproducible run to run).
        compute: ``engine``, ``precision``, ``device`` and ``deterministic`` as one
            :class:`fedp13n.utils.device.Compute` (``Compute.resolve(...)``), instead of them.

    The returned function takes ``model_weights`` (a ``state_dict`` of ``model_fn()``,
    e.g. FedAvg's ``get_model_weights``) and ``client_inputs``, an iterable of mappings
    with ``train_data`` and ``test_data`` (unbatched: a ``ClientDataset`` or an ``(x, y)``
    tuple), optionally ``context`` (handed to the strategies) and ``client_id`` (default:
    the input's position). It returns an ``OrderedDict`` with ``baseline_metrics`` and
    one key per strategy, every leaf a list with one scalar per sampled client, plus
    ``client_ids`` and ``seed`` attributes (see ``PersonalizationResult``). It raises
    ``TypeError`` for client inputs without exactly the expected keys and for client data
    that does not fit the model (see the module docstring).

    No clients at all give the result with empty lists, as TFF: every key is present and
    its structure is what the baseline and the strategy return on a dry run on a
    *one-example* client (one zero example as train and test data, shaped and typed by
    the model's ``input_spec``; user code never sees a client without examples), every
    leaf an empty list, ``client_ids`` empty; the structure is derived at the first such
    call and kept. A model without an ``input_spec`` gives an empty ``OrderedDict`` for
    every key instead (without data or spec the label dtype, hence e.g. whether
    ``accuracy`` exists, is unknown). A strategy that fails on that one-example client
    raises here, with a note saying so.

    Raises:
        TypeError: a non-callable ``model_fn``, ``baseline_evaluate_fn``, strategy builder
            or built strategy; a ``model_fn()`` that is not an ``nn.Module``; a strategy
            that takes neither 3 nor 4 positional arguments; a non-mapping
            ``personalize_fn_dict``; a non-int ``max_num_samples`` or ``seed``.
        ValueError: a strategy named ``baseline_metrics`` (or ``client_ids``/``seed``,
            which the JSON form uses); ``max_num_samples`` < 1. At call time: global
            weights with a NaN or infinite value (naming the first such tensor).
    """
    probe = _build_probe(model_fn)
    if not callable(baseline_evaluate_fn):
        raise TypeError(
            f"baseline_evaluate_fn must be a callable (model, dataset) -> metrics, got "
            f"{baseline_evaluate_fn!r} (e.g. fedp13n.personalization.evaluate_fn)."
        )
    strategies = _check_strategies(personalize_fn_dict)
    max_num_samples = _check_eval_settings(max_num_samples, max_num_clients, seed, executor)
    compute = Compute.given(
        compute, device=device, precision=precision, deterministic=deterministic, engine=engine
    )
    engine = compute.engine
    job = _ClientJob(
        model_fn,
        baseline_evaluate_fn,
        tuple((k, b, ctx) for k, (b, ctx) in strategies.items()),
        compute.without_engine(),
    )
    batched = _engine_plan(engine, model_fn, baseline_evaluate_fn, strategies)
    spec = input_spec_of(probe)
    #: the result's structure for no clients (leaves = empty lists), derived once
    empty_structure: list[OrderedDict[str, Any]] = []

    def personalization_eval(
        model_weights: Mapping[str, torch.Tensor], client_inputs: Iterable[Mapping[str, Any]]
    ) -> PersonalizationResult:
        weights = _check_weights(probe, model_weights)
        inputs = _check_client_inputs(client_inputs, probe)
        run_seed = secrets.randbits(63) if seed is None else int(seed)
        if not inputs:
            if not empty_structure:
                empty_structure.append(_empty_structure(job, weights, spec, run_seed))
            return PersonalizationResult(
                copy.deepcopy(empty_structure[0]), client_ids=(), seed=run_seed
            )
        chosen = reservoir_sample(len(inputs), max_num_samples, derive_rng(run_seed, "p13n-sample"))
        ex = executor if executor is not None else InProcessExecutor()
        tasks = _client_tasks([inputs[i] for i in chosen], ex.share(weights), run_seed)
        if batched is None:
            outputs = ex.map(functools.partial(_evaluate_client, job), tasks)
        else:
            outputs = _evaluate_with_engine(engine, batched, job, weights, tasks, ex, run_seed)
        return _stacked_result(outputs, tasks, strategies, run_seed)

    return personalization_eval


def _check_eval_settings(
    max_num_samples: Any, max_num_clients: Any, seed: Any, executor: Any
) -> int:
    """``build_personalization_eval``'s settings checked; the sample size as an int."""
    if max_num_clients is not None:
        if max_num_samples not in (100, max_num_clients):
            raise TypeError(
                f"max_num_samples={max_num_samples!r} and max_num_clients={max_num_clients!r} "
                "name the same setting (max_num_clients is TFF 0.87's name); give one."
            )
        max_num_samples = max_num_clients
    if not isinstance(max_num_samples, numbers.Integral) or isinstance(max_num_samples, bool):
        raise TypeError(f"max_num_samples must be an int, got {max_num_samples!r}.")
    if max_num_samples < 1:
        raise ValueError(f"max_num_samples must be a positive integer, got {max_num_samples}.")
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int or None, got {seed!r}.")
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(
            f"executor must be a fedp13n Executor (or None for in-process), got {executor!r}."
        )
    return int(max_num_samples)


def _client_tasks(inputs: list[Mapping[str, Any]], weights: Any, run_seed: int) -> list:
    """One task per sampled client input, all sharing the global ``weights``."""
    return [
        _ClientTask(
            weights=weights,
            seed=run_seed,
            client_id=ci["client_id"],
            train_data=ci["train_data"],
            test_data=ci["test_data"],
            context=ci["context"],
        )
        for ci in inputs
    ]


def _stacked_result(
    outputs: list[Mapping[str, Any]], tasks: list, strategies: Mapping[str, Any], run_seed: int
) -> PersonalizationResult:
    """The clients' outputs as one list per metric (position ``i``: ``tasks[i]``'s client)."""
    ids = [t.client_id for t in tasks]
    result = PersonalizationResult(client_ids=ids, seed=run_seed)
    for key in (BASELINE_KEY, *strategies):
        where = "baseline_evaluate_fn" if key == BASELINE_KEY else f"strategy {key!r}"
        result[key] = stack_trees([o[key] for o in outputs], ids, where)
    return result


def _engine_plan(engine, model_fn, baseline_evaluate_fn, strategies) -> list | None:
    """The engine's strategy specs (None where a strategy runs per client), or None when
    the engine does not serve this evaluation at all."""
    if engine is None:
        return None
    from fedp13n.engine import note_fallback, strategy_from_builder
    from fedp13n.personalization.p13n_utils import is_default_evaluate_fn

    if not is_default_evaluate_fn(baseline_evaluate_fn):
        note_fallback("the baseline_evaluate_fn is not fedp13n's evaluate_fn with cross-entropy")
        return None
    specs = []
    for name, (builder, _) in strategies.items():
        spec, why = strategy_from_builder(name, builder)
        if spec is None:
            note_fallback(why)
        specs.append(spec)
    return specs


def _evaluate_with_engine(engine, specs, job, weights, tasks, executor, run_seed):
    """Baseline and batchable strategies on the engine, the rest per client; merged in
    the strategies' order."""
    from fedp13n.personalization.p13n_utils import baseline_ignore_ids

    clients = [(t.client_id, t.train_data, t.test_data) for t in tasks]
    batched = engine.personalize(
        weights, clients, [s for s in specs if s is not None], seed=run_seed, baseline=True,
        ignore_ids=baseline_ignore_ids(job.baseline_evaluate_fn),
    )  # fmt: skip
    rest = tuple(st for st, spec in zip(job.strategies, specs, strict=True) if spec is None)
    per_client = None
    if rest:
        sub = dataclasses.replace(job, strategies=rest)
        per_client = executor.map(functools.partial(_evaluate_client, sub), tasks)
    outputs = []
    for i, out in enumerate(batched):
        merged: OrderedDict[str, Any] = OrderedDict()
        merged[BASELINE_KEY] = out[BASELINE_KEY]
        for (name, _, _), spec in zip(job.strategies, specs, strict=True):
            merged[name] = out[name] if spec is not None else per_client[i][name]
        outputs.append(merged)
    return outputs


def reservoir_sample(num_items: int, k: int, rng: np.random.Generator) -> list[int]:
    """``min(k, num_items)`` distinct positions of ``range(num_items)``, sorted, uniformly.

    Vitter's Algorithm R: item ``i >= k`` replaces a random reservoir slot with
    probability ``k / (i + 1)``, which leaves every ``k``-subset equally likely. One pass,
    ``O(k)`` memory: the streaming sampler TFF's ``federated_sample`` uses.
    """
    reservoir = list(range(min(k, num_items)))
    for i in range(k, num_items):
        j = int(rng.integers(0, i + 1))
        if j < k:
            reservoir[j] = i
    return sorted(reservoir)


# -- client work (runs in the executor's workers) ---------------------------------------------
@dataclass(frozen=True)
class _ClientJob:
    """What every client task shares: travels with the function, not with each task."""

    model_fn: ModelFn
    baseline_evaluate_fn: Callable[..., Mapping[str, Any]]
    #: (name, builder, whether the strategy takes ``context``)
    strategies: tuple[tuple[str, Callable[[], Callable[..., Any]], bool], ...]
    #: resolved by the builder (no engine here)
    compute: Compute = Compute()


@dataclass(frozen=True)
class _ClientTask:
    weights: SharedRef
    seed: int
    client_id: str
    train_data: ClientDataset
    test_data: ClientDataset
    context: Any


def _evaluate_client(job: _ClientJob, task: _ClientTask) -> OrderedDict[str, Any]:
    """Baseline then every strategy on one client, each from fresh global weights (on the
    job's device, under its precision)."""
    device = job.compute.placed()
    if job.compute.device != "cpu":
        task = dataclasses.replace(
            task, train_data=task.train_data.to(device), test_data=task.test_data.to(device)
        )
    with job.compute.autocast(device):
        return _evaluate_client_steps(job, task, device)


def _evaluate_client_steps(
    job: _ClientJob, task: _ClientTask, device: torch.device
) -> OrderedDict[str, Any]:
    weights = task.weights.get()
    out: OrderedDict[str, Any] = OrderedDict()
    # fork_rng: seeding here must not disturb the caller's RNG (in-process executor).
    with torch.random.fork_rng(devices=[]):
        step = "baseline_evaluate_fn"
        try:
            model = _fresh_model(job.model_fn, weights, device)
            torch.manual_seed(derive_seed(task.seed, "p13n", task.client_id, BASELINE_KEY))
            model.eval()
            metrics = job.baseline_evaluate_fn(model, task.test_data)
            out[BASELINE_KEY] = scalar_tree(_as_metrics(metrics, step), step)
            for name, builder, takes_context in job.strategies:
                step = f"strategy {name!r}"
                model = _fresh_model(job.model_fn, weights, device)
                torch.manual_seed(derive_seed(task.seed, "p13n", task.client_id, name))
                personalize_fn = builder()
                if takes_context:
                    metrics = personalize_fn(model, task.train_data, task.test_data, task.context)
                else:
                    metrics = personalize_fn(model, task.train_data, task.test_data)
                out[name] = scalar_tree(_as_metrics(metrics, step), step)
        except Exception as e:
            e.add_note(f"(fedp13n: in {step} on client {task.client_id!r})")
            raise
    return out


def _fresh_model(
    model_fn: ModelFn, weights: Mapping[str, torch.Tensor], device: torch.device
) -> nn.Module:
    """A new model (built on the CPU) with ``weights``, on ``device``.

    The caller seeds torch *after* this (``derive_seed(seed, "p13n", client_id, name)``):
    the initialisation's draws are overwritten by ``weights``, so a strategy's shuffle and
    dropout start from the seed alone, the state the batched engine's per-client generator
    starts from (``torch.Generator().manual_seed(...)``, no model built)."""
    model = model_fn()
    if device.type != "cpu":
        model = model.to(device)
    model.load_state_dict(weights)
    return model


def _empty_structure(
    job: _ClientJob, weights: Mapping[str, torch.Tensor], spec: InputSpec | None, seed: int
) -> OrderedDict[str, Any]:
    """The result's structure for no clients: every key, the structure the baseline and
    every strategy return on a one-example client of ``spec``, every leaf ``[]``."""
    keys = (BASELINE_KEY, *(name for name, _, _ in job.strategies))
    if spec is None:
        return OrderedDict((k, OrderedDict()) for k in keys)
    one = one_example_dataset(spec)
    dry_run = {"client_id": "dry-run", "train_data": one, "test_data": one, "context": None}
    (task,) = _client_tasks([dry_run], LocalRef(weights), seed)
    try:
        out = _evaluate_client(job, task)
    except Exception as e:
        e.add_note(
            "(fedp13n: no client inputs, so the result structure was derived from a dry run "
            "on a one-example client of the model's input_spec; this function fails on it)"
        )
        raise
    return OrderedDict((k, _empty_leaves(out[k])) for k in keys)


def _empty_leaves(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return OrderedDict((k, _empty_leaves(v)) for k, v in tree.items())
    return []


def _as_metrics(metrics: Any, step: str) -> Mapping[str, Any]:
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"{step} returned a {type(metrics).__name__}; it must return a mapping "
            "(possibly nested) of metric name -> scalar."
        )
    return metrics


# -- argument checks --------------------------------------------------------------------------
def _build_probe(model_fn: Any) -> nn.Module:
    """``model_fn()`` once, at build time (as TFF), with the caller's RNG untouched."""
    check_model_fn(model_fn)
    with torch.random.fork_rng(devices=[]):  # building a model draws its random init
        model = model_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model_fn() returned a {type(model).__name__}, not a torch nn.Module; model_fn "
            "must build and return a fresh model (e.g. functools.partial(emnist_conv_dropout, "
            "num_classes=62))."
        )
    input_spec_of(model)  # a malformed input_spec fails now
    return model


def _takes_context(fn: Callable[..., Any], name: str) -> bool:
    """Whether strategy ``fn`` takes ``(model, train, test, context)`` or TFF's 3 arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # not inspectable (e.g. a C callable): the 4-arg form
        return True
    variadic = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
    if _binds(sig, 0) and not variadic:  # no arguments needed: the builder returned a builder
        raise TypeError(
            f"personalize_fn_dict[{name!r}]() returned a no-argument callable (a strategy "
            "builder?), not the strategy: the builder must return personalize_fn(model, "
            f"train_data, test_data[, context]); pass that builder itself as [{name!r}]."
        )
    for nargs in (4, 3):
        if _binds(sig, nargs):
            return nargs == 4
    raise TypeError(
        f"the strategy personalize_fn_dict[{name!r}]() has signature {sig}; it must take "
        "(model, train_data, test_data) (TFF's) or (model, train_data, test_data, context)."
    )


def _check_no_argument_builder(builder: Callable[..., Any], name: str) -> None:
    """A TypeError naming the key when ``builder`` needs arguments: a built strategy
    (a personalize_fn) given where its no-argument builder belongs."""
    try:
        sig = inspect.signature(builder)
    except (TypeError, ValueError):  # not inspectable: the call decides
        return
    if not _binds(sig, 0):
        raise TypeError(
            f"personalize_fn_dict[{name!r}] takes arguments ({', '.join(sig.parameters)}): "
            "it is a built strategy "
            "(a personalize_fn), but a no-argument builder is expected; pass the builder, "
            "e.g. functools.partial(build_personalize_fn, ...) or "
            "fedp13n.personalization.registry.build_strategy(...), not its result."
        )


def _binds(sig: inspect.Signature, nargs: int) -> bool:
    """Whether a callable of signature ``sig`` takes ``nargs`` positional arguments."""
    try:
        sig.bind(*([None] * nargs))
    except TypeError:
        return False
    return True


def _check_strategies(
    personalize_fn_dict: Any,
) -> OrderedDict[str, tuple[Callable[[], Any], bool]]:
    if not isinstance(personalize_fn_dict, Mapping):
        raise TypeError(
            f"personalize_fn_dict must be a mapping strategy name -> no-argument strategy "
            f"builder, got {type(personalize_fn_dict).__name__}."
        )
    strategies: OrderedDict[str, tuple[Callable[[], Any], bool]] = OrderedDict()
    for name, builder in personalize_fn_dict.items():
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"strategy names must be strings, not empty, got {name!r}.")
        if name == BASELINE_KEY or name in META_KEYS:
            raise ValueError(
                f"{name!r} cannot be a strategy name: the result uses it for "
                f"{'the global model' if name == BASELINE_KEY else 'its metadata'}; rename it."
            )
        if not callable(builder):
            raise TypeError(
                f"personalize_fn_dict[{name!r}] must be a no-argument callable that builds the "
                f"strategy, got a {type(builder).__name__} (TFF's convention: pass the builder, "
                "e.g. functools.partial(build_personalize_fn, ...), not a built strategy's result)."
            )
        _check_no_argument_builder(builder, name)
        built = builder()  # built once here so a bad configuration fails now, not in a worker
        if not callable(built):
            raise TypeError(
                f"personalize_fn_dict[{name!r}]() returned a {type(built).__name__}; the builder "
                "must return a callable personalize_fn(model, train_data, test_data[, context])."
            )
        strategies[name] = (builder, _takes_context(built, name))
    return strategies


def _check_weights(probe: nn.Module, weights: Any) -> OrderedDict[str, torch.Tensor]:
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"model_weights must be a state_dict (mapping name -> tensor), got "
            f"{type(weights).__name__}; pass model.state_dict() or FedAvg's get_model_weights()."
        )
    expected = probe.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"model_weights do not fit model_fn(): missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; pass the state_dict of the model model_fn builds."
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, ref in expected.items():
        v = weights[k]
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"model_weights[{k!r}] is a {type(v).__name__}, not a torch.Tensor.")
        if v.shape != ref.shape:
            raise ValueError(
                f"model_weights[{k!r}] has shape {tuple(v.shape)} but model_fn()'s has "
                f"{tuple(ref.shape)}."
            )
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise ValueError(
                f"model_weights[{k!r}] has {bad} non-finite value(s) (NaN or infinity): the "
                "global model diverged or was corrupted; evaluate finite weights (e.g. an "
                "earlier round's, or retrain with a lower learning rate)."
            )
        out[k] = v.detach().cpu().clone()
    return out


def _check_client_inputs(client_inputs: Any, probe: nn.Module) -> list[dict[str, Any]]:
    """The client inputs, checked: their keys, unique ids, and data that fits the model
    (a TypeError naming the client otherwise)."""
    if isinstance(client_inputs, Mapping | str | bytes) or not isinstance(client_inputs, Iterable):
        raise TypeError(
            f"client_inputs must be a list of per-client mappings (train_data, test_data), "
            f"got a {type(client_inputs).__name__}."
        )
    inputs = [check_client_input(ci, i) for i, ci in enumerate(client_inputs)]
    seen: dict[str, int] = {}
    for i, ci in enumerate(inputs):
        if ci["client_id"] in seen:
            raise ValueError(
                f"client id {ci['client_id']!r} appears twice (inputs {seen[ci['client_id']]} "
                f"and {i}); client ids must be unique so results can be joined by id."
            )
        seen[ci["client_id"]] = i
    for ci in inputs:
        where = f"client {ci['client_id']!r}"
        check_fits_model(probe, ci["train_data"], f"train_data of {where}")
        check_fits_model(probe, ci["test_data"], f"test_data of {where}")
    return inputs


#: TFF 0.87's name (``tff.learning.algorithms.build_personalization_eval_computation``):
#: the same builder; its result is called as TFF's computation is,
#: ``(model_weights, client_inputs)``.
build_personalization_eval_computation = build_personalization_eval
