"""FedPer: a shared body averaged by FedAvg, a personal head kept by each client.

Source: Arivazhagan, Aggarwal, Singh and Choudhary, "Federated Learning with
Personalization Layers", 2019 (arXiv:1912.00818), Section 3 and Algorithm 1: the model is
split into base layers, shared and aggregated with FedAvg, and personalization layers
(the last ones), which never leave the client. In round t a selected client k starts
from the global base layers ``W_B^t`` and its own personalization layers ``W_P,k``,
trains both on its data for E local epochs (the paper's client update, SGD), sends back
only the base layers and keeps the trained personalization layers for its next round.
The server averages the base layers, weighted by the clients' numbers of examples
(FedAvg's ``n_k / n``).

Here: the personal parameters (``personal_layers``: module or parameter names as for
head-only fine-tuning, :func:`fedp13n.models.heads.head_parameter_names`; default the
last layer with parameters, the final ``Linear``) are each client's state in a
:class:`fedp13n.state.ClientStateStore`, read by the lead process into the client's task
and written back from its result (:mod:`fedp13n.state.store`). A client's first head is
the global model's head, which the server never changes (no delta of it is averaged): the
initial head. The server side is FedAvg's (its server optimizer on the averaged body
delta; with SGD lr 1.0 and no momentum, the paper's plain average). With
``proximal_mu > 0`` FedProx's term pulls the body, not the head, towards the global body.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: the configuration reads METHODS
    import torch
    from torch import nn

#: The training methods of a stage, each a small module on the client program, and what
#: each keeps per client (None: nothing). The one place that names them.
METHODS = {
    "fedavg": None,
    "fedper": "a personal head (personal_layers; default the last layer)",
    "fedrep": "a personal head, trained alone (head_epochs) before the body each round",
    "lg_fedavg": "a personal body (personal_layers; default all but the last layer)",
    "ditto": "a whole personal model, pulled to the global one by ditto_lambda",
    "scaffold": "control variates c_i (the server keeps c in its state)",
    "per_fedavg": None,  # Per-FedAvg: a meta-model, personalized by one step (ADAPTS)
    "pfedme": "a personalized model theta (its last inner solution), pulled by pfedme_lambda",
    "fedbn": "its batch-norm layers' parameters and running statistics",
    "apfl": "a whole personal model v and a mixing weight alpha (apfl_alpha)",
}

#: Each method's own settings: keywords of ``build_weighted_fed_avg`` and keys of a
#: training stage, refused with another method. The one place that names them.
METHOD_SETTINGS = {
    "fedrep": ("head_epochs",),
    "ditto": ("ditto_lambda",),
    "per_fedavg": ("per_fedavg_variant", "per_fedavg_alpha"),
    "pfedme": ("pfedme_lambda", "pfedme_k", "pfedme_personal_lr", "pfedme_beta"),
    "apfl": ("apfl_alpha", "apfl_adaptive"),
}

#: Methods whose personal parameters are, by default, everything but the head (the last
#: layer with parameters): LG-FedAvg's local representation (:mod:`.lg_fedavg`).
BODY_PERSONAL = ("lg_fedavg",)
#: Methods that keep a whole personal model per client beside the global one (every
#: trainable parameter; no ``personal_layers``): Ditto (:mod:`.ditto`), pFedMe's theta
#: (:mod:`.pfedme`).
WHOLE_MODEL = ("ditto", "pfedme")
#: Methods whose state is a control variate per trainable parameter (not weights): SCAFFOLD
#: (:mod:`.scaffold`); a client's own model is the global one.
CONTROL_VARIATES = ("scaffold",)
#: Methods whose state is every batch-norm layer's state-dict entries, running statistics
#: included: FedBN (:mod:`.fedbn`).
BATCH_NORM_LOCAL = ("fedbn",)
#: Methods that keep a whole personal model and a mixing weight, and evaluate their
#: mixture with the global model: APFL (:mod:`.apfl`).
MIXTURE = ("apfl",)

#: Methods without client state whose clients personalize the global model by the
#: method's own local step before evaluation (both own-state and "new clients"
#: protocols): Per-FedAvg (:func:`fedp13n.algorithms.per_fedavg.adapt`).
ADAPTS = ("per_fedavg",)


def check_method(value: Any, error: type[Exception] = ValueError) -> str:
    """``value`` if it names one of :data:`METHODS`."""
    if value not in METHODS:
        raise error(f"method must be one of {list(METHODS)}, got {value!r}.")
    return value


def keeps_state(method: str) -> bool:
    """Whether ``method`` keeps tensors per client across rounds (a client-state store)."""
    return METHODS.get(method) is not None


def state_kind(method: str) -> str | None:
    """What ``method`` keeps per client, as a word (None: nothing): stages whose kinds
    (and ``personal_layers``) differ cannot share a run's one client-state store."""
    if not keeps_state(method):
        return None
    if method in WHOLE_MODEL or method in CONTROL_VARIATES:
        return "model" if method in WHOLE_MODEL else "controls"
    if method in BATCH_NORM_LOCAL:
        return "batch_norm"
    if method in MIXTURE:
        return "mixture"
    return "body" if method in BODY_PERSONAL else "head"


def parse_personal_layers(
    value: Any, error: type[Exception] = ValueError
) -> tuple[str, ...] | None:
    """``personal_layers`` as a tuple of names, or None (the last layer with parameters):
    a string ``"fc1,fc2"`` (commas separate names) or a sequence of strings."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else value
    if isinstance(names, Sequence) and all(isinstance(n, str) for n in names):
        out = tuple(n.strip() for n in names)
        if out and all(out) or out == ("",):
            return out
    raise error(
        f"personal_layers must name layers or parameters of the model, e.g. 'fc2' or "
        f"'fc1,fc2' ('' for the whole model), got {value!r}."
    )


def personal_parameter_names(
    model: nn.Module, personal_layers: str | Sequence[str] | None, method: str = "fedper"
) -> tuple[str, ...]:
    """The trainable parameters ``personal_layers`` names, in model order; None: the
    method's default (the last layer with parameters; for LG-FedAvg, :data:`BODY_PERSONAL`,
    every other one). A one-line ValueError listing the valid names."""
    from fedp13n.models.heads import head_parameter_names

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    layers = parse_personal_layers(personal_layers)
    if method in (*WHOLE_MODEL, *CONTROL_VARIATES, *BATCH_NORM_LOCAL, *MIXTURE):
        if layers is not None:
            raise ValueError(
                f"personal_layers is for FedPer, FedRep and LG-FedAvg; method={method!r} "
                f"keeps {METHODS[method]}: leave personal_layers out."
            )
        if method in BATCH_NORM_LOCAL:
            from fedp13n.algorithms.fedbn import batch_norm_names

            return tuple(n for n in batch_norm_names(model) if n in set(trainable))
        return tuple(trainable)
    try:
        names = head_parameter_names(model, layers)
    except ValueError as e:  # "head 'fc9' names no layer ...": say which setting
        raise ValueError(f"personal_layers: {str(e).removeprefix('head ')}") from None
    if layers is None and method in BODY_PERSONAL:
        names = [n for n in trainable if n not in set(names)]
        if not names:
            raise ValueError(
                f"method={method!r} keeps everything but the head personal, but "
                f"{type(model).__name__} has only a head; name personal_layers, or use "
                "a model with a body."
            )
    elif layers is None and set(names) >= set(trainable):
        raise ValueError(
            f"method={method!r} keeps the head personal and averages the rest, but "
            f"{type(model).__name__} is only a head (its last layer is all it trains), so "
            "nothing would be averaged; use a model with a body, or name personal_layers "
            "('' keeps the whole model personal: local training only)."
        )
    chosen = set(names)
    return tuple(n for n in trainable if n in chosen)


def fedper_state_spec(
    model_fn: Callable[[], nn.Module],
    personal_layers: str | Sequence[str] | None,
    method: str = "fedper",
) -> dict[str, tuple[tuple[int, ...], str]]:
    """The :class:`~fedp13n.state.ClientStateStore` spec ``method`` (FedPer, FedRep,
    LG-FedAvg, ...) keeps for each client: the personal parameters' names, shapes and dtypes
    (:func:`personal_parameter_names`; FedBN: every batch-norm entry, buffers included)."""
    import torch

    from fedp13n.state.store import state_spec

    if not keeps_state(check_method(method)):
        raise ValueError(
            f"method={method!r} keeps no client state, so it needs no client-state store; "
            f"name a method that keeps one: {[m for m in METHODS if keeps_state(m)]}."
        )
    with torch.random.fork_rng(devices=[]):
        model = model_fn()
    params = dict(model.state_dict())
    names = personal_parameter_names(model, personal_layers, method)
    if method in BATCH_NORM_LOCAL:
        from fedp13n.algorithms.fedbn import batch_norm_names

        names = batch_norm_names(model)
    spec = state_spec({n: params[n].detach() for n in names})
    if method in MIXTURE:
        from fedp13n.algorithms.apfl import APFL_ALPHA

        spec[APFL_ALPHA] = ((), "float32")
    return spec


def with_personal_state(
    weights: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """The global weights with the client's personal tensors in place (a new dict; the
    global ones where the client has none yet)."""
    return {**weights, **(state or {})}


def client_model_weights(
    method: str, weights: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """The weights of a client's own model under ``method``, from the global ``weights``
    and the client's stored ``state`` (None: it has none, the global model's): how the
    own-state protocol (:mod:`fedp13n.algorithms.own_state`) builds the model it
    evaluates. FedPer / FedRep: the global body with its head; LG-FedAvg: its body with the
    global head; Ditto: its whole personal model (the global buffers); SCAFFOLD (whose
    state is control variates): the global model; FedBN: the global weights with its
    batch-norm parameters and statistics; APFL: ``alpha v + (1 - alpha) w``."""
    if method in CONTROL_VARIATES:
        return dict(weights)
    if method in MIXTURE and state is not None:
        from fedp13n.algorithms.apfl import mixed_weights

        return mixed_weights(weights, state)
    return with_personal_state(weights, state)


def method_builder(method: str, doc: str) -> Callable[..., Any]:
    """``build_<method>(model_fn, client_state=None, **settings)``: the shortcut for
    :func:`~fedp13n.algorithms.fed_avg.build_weighted_fed_avg` with ``method``, documented
    by ``doc``: ``settings`` are that builder's keywords (the method's own among them,
    :data:`METHOD_SETTINGS`), each unset one at its default there (declared once)."""

    def build(model_fn: Callable[[], nn.Module], client_state: Any = None, **settings: Any):
        from fedp13n.algorithms.fed_avg import build_weighted_fed_avg

        return build_weighted_fed_avg(
            model_fn, method=method, client_state=client_state, **settings
        )

    build.__name__ = build.__qualname__ = f"build_{method}"
    build.__module__ = f"fedp13n.algorithms.{method}"  # where it is bound: pickles by name
    build.__doc__ = doc
    return build


build_fedper = method_builder(
    "fedper",
    """FedPer: :func:`~fedp13n.algorithms.fed_avg.build_weighted_fed_avg` with
    ``method="fedper"`` (every other setting is FedAvg's), keeping ``personal_layers`` of
    each client in ``client_state``, a :class:`~fedp13n.state.ClientStateStore` made
    with :func:`fedper_state_spec`. Commit the store after each round (before a
    checkpoint of that round): ``client_state.commit(state.round_num)``.""",
)
