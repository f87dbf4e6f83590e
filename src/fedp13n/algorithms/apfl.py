"""APFL: each client learns a mixture of its personal model and the global one.

Source: Deng, Kamani and Mahdavi, "Adaptive Personalized Federated Learning", 2020
(arXiv:2003.13461), Algorithm 1 and Section 3.3 (adaptive alpha). Client i keeps a
personal model ``v_i`` and a mixing weight ``alpha_i``; its personalized model is
``vbar_i = alpha_i v_i + (1 - alpha_i) w``. At each local step, on one batch, with the
values before the step:

    w       <- w       - lr * grad f_i(w)
    v_i     <- v_i     - lr * grad_v f_i(vbar_i)       = lr * alpha_i * grad f_i(vbar_i)
    alpha_i <- alpha_i - lr * grad_alpha f_i(vbar_i)   = lr * <v_i - w, grad f_i(vbar_i)>

(the last only with adaptive alpha, then projected onto [0, 1]); the server averages the
clients' ``w`` as FedAvg does. FL-bench's defaults (KarhouTam/FL-bench,
``src/server/apfl.py``: ``--alpha 0.5``, ``--adaptive_alpha 1``) are
:data:`DEFAULT_APFL_ALPHA` and adaptive alpha on (FL-bench mixes the two models' outputs
and adds ``0.02 alpha`` to alpha's gradient, as FedTorch does; here the paper's mixture of
parameters and its plain gradient).

Here: ``v_i`` (every trainable parameter) and ``alpha_i`` (``APFL_ALPHA``, a float32
scalar) are the client's state in a :class:`fedp13n.state.ClientStateStore` (spec
``fedper_state_spec(model_fn, None, "apfl")``); a client's first ``v_i`` is the global
model of its first round, its first ``alpha_i`` ``apfl_alpha``. The local steps are the
client program's (:class:`fedp13n.client.program.LocalTraining`) on a :class:`Mixture`
module holding ``w``, ``v_i`` and ``alpha_i``, whose forward returns ``w``'s outputs
(the round's loss and metrics are the global copy's) and keeps ``vbar_i``'s, whose loss is
the program's ``penalty``: one backward gives all three gradients, the client optimizer
(built once over all three) takes all three steps. Buffers are ``w``'s. The own-state
protocol evaluates ``alpha_i v_i + (1 - alpha_i) w`` with the server's ``w``
(:func:`fedp13n.algorithms.fedper.client_model_weights`); a new client starts from
``v = w`` and ``apfl_alpha``, runs the local steps and is evaluated with that mixture of
its ``v`` and the server's ``w``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedp13n.algorithms.fedper import method_builder
from fedp13n.utils.checks import check_fraction

if TYPE_CHECKING:  # torch is imported where it is used: the configuration reads this module
    import torch
    from torch import nn

#: APFL's initial mixing weight when unset: FL-bench's default.
DEFAULT_APFL_ALPHA = 0.5
#: The name of the mixing weight in a client's state (beside its personal model's names).
APFL_ALPHA = "apfl.alpha"


def check_apfl_alpha(value: Any, error: type[Exception] = ValueError) -> float:
    """``value`` as a float in [0, 1] (APFL's initial mixing weight)."""
    return check_fraction("apfl_alpha", value, closed_right=True, error=error)


def mixed_weights(
    weights: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``alpha v + (1 - alpha) w`` for every tensor of the client's ``state`` (its ``v``
    and ``alpha``), ``weights``' own elsewhere (buffers): the client's personalized model."""
    alpha = float(state[APFL_ALPHA])
    out = dict(weights)
    for n, v in state.items():
        if n != APFL_ALPHA:
            w = weights[n]
            out[n] = (alpha * v.to(w.dtype) + (1 - alpha) * w).to(w.dtype)
    return out


def _mixture_class():
    import torch
    from torch import nn
    from torch.func import functional_call

    class Mixture(nn.Module):
        """``w`` (``model``, trained in place), ``v`` and ``alpha`` as one module for the
        client program: forward gives ``w``'s outputs and keeps ``vbar``'s in
        :attr:`mixed` (``w`` detached there: ``vbar``'s loss trains ``v`` and ``alpha``
        only). ``alpha`` is projected onto [0, 1] before each use."""

        def __init__(self, model, names, v, alpha: float, adaptive: bool) -> None:
            super().__init__()
            self.model, self.names = model, list(names)
            self.v = nn.ParameterList(nn.Parameter(v[n].detach().clone()) for n in names)
            a = torch.tensor(float(alpha), dtype=torch.float32)
            self.alpha = nn.Parameter(a, requires_grad=adaptive)
            self.mixed: torch.Tensor | None = None
            self.targets: torch.Tensor | None = None

        def forward(self, x):
            with torch.no_grad():
                self.alpha.clamp_(0.0, 1.0)
            w = dict(self.model.named_parameters())
            a = self.alpha
            mix = {
                n: a * v + (1 - a) * w[n].detach() for n, v in zip(self.names, self.v, strict=True)
            }
            self.mixed = functional_call(self.model, mix, (x,))
            return self.model(x)

        def state(self) -> dict:
            """The client's new state: ``v`` and ``alpha`` (in [0, 1]), on the CPU."""
            out = {n: v.detach().cpu().clone() for n, v in zip(self.names, self.v, strict=True)}
            out[APFL_ALPHA] = self.alpha.detach().clamp(0.0, 1.0).cpu().clone()
            return out

    return Mixture


class _Targets:
    """The loss the client program sees: the global copy's loss on ``(outputs, y)``,
    keeping ``y`` for the mixture's loss (the program's ``penalty``, called after it)."""

    def __init__(self, loss_fn: Callable, mixture: Any) -> None:
        self.loss_fn, self.mixture = loss_fn, mixture

    def __call__(self, outputs, targets):
        self.mixture.targets = targets
        return self.loss_fn(outputs, targets)

    def mixed_loss(self):
        return self.loss_fn(self.mixture.mixed, self.mixture.targets)


def apfl_local(
    work: Any,
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor] | None,
    names: Sequence[str],
    run: Callable[..., Any],
) -> tuple[Any, dict, dict]:
    """One client's APFL local steps: ``model`` holds ``w`` (loaded); ``state`` its ``v``
    and ``alpha`` (None: ``w`` and ``work.apfl_alpha``); ``run(module, loss_fn, penalty)``
    runs the client program on the mixture. Returns the training statistics, ``w``'s
    trained state dict (on the CPU) and the new state; ``model`` then holds the client's
    personalized model ``alpha v + (1 - alpha) w`` with the round's ``w`` (``weights``,
    its buffers too), as the own-state protocol builds it."""
    if state is None:
        state = {**{n: weights[n] for n in names}, APFL_ALPHA: work.apfl_alpha}
    mixture = _mixture_class()(model, names, state, state[APFL_ALPHA], work.apfl_adaptive)
    loss = _Targets(work.loss_fn, mixture)
    stats = run(mixture, loss, loss.mixed_loss)
    trained = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    new = mixture.state()
    model.load_state_dict(mixed_weights(weights, new))
    return stats, trained, new


build_apfl = method_builder(
    "apfl",
    """APFL: :func:`~fedp13n.algorithms.fed_avg.build_weighted_fed_avg` with
    ``method="apfl"``: the global model is the average of the clients' ``w``; each
    client's ``v`` and ``alpha`` are kept in ``client_state`` (a
    :class:`~fedp13n.state.ClientStateStore` made with ``fedper_state_spec(model_fn, None,
    "apfl")``), alpha starting at ``apfl_alpha`` (default :data:`DEFAULT_APFL_ALPHA`) and
    learned unless ``apfl_adaptive=False``. Commit the store after each round.""",
)
