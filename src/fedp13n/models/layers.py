"""Fast layers for CPU training of small models.

:class:`FastDropout` is inverted dropout (Srivastava et al. 2014, "Dropout: A Simple Way to
Prevent Neural Networks from Overfitting"), the same function as ``torch.nn.Dropout``:
each value is kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``, else zeroed.

Why a second dropout: on a CPU, ``F.dropout`` draws one float per value
(``bernoulli_``), which for the 20 x 9216 activations of the EMNIST conv-dropout model
costs about as much as a dense layer (1.3 ms per batch of 20). Here one 64-bit random word
gives 7 random *bytes*, and a value is dropped when its byte is below ``p * 256``. For
every ``p`` that is a multiple of 1/256 (the model's 0.25 and 0.5 included) that is an
exact Bernoulli(``1 - p``) keep decision, not an approximation; other values of ``p`` fall
back to ``F.dropout``. The bytes come from torch's global generator, so
``torch.manual_seed`` fixes the masks exactly as it fixes ``F.dropout``'s, although the two
draw different masks from the same seed.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

#: Random bytes used per 64-bit word: ``random_()`` on int64 draws from [0, 2**63), so the
#: most significant byte has one bit fewer and is left out.
_BYTES_PER_WORD = 7
_LOW_BYTES = slice(0, 7) if sys.byteorder == "little" else slice(1, 8)


def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be between 0 and 1, got {p}.")
    return p


def random_bytes(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` independent uniform random bytes (uint8) from ``generator`` (a CPU generator;
    ``None``: torch's global CPU generator). A ``torch.Generator`` seeded with ``s`` gives
    the same bytes as the global generator after ``torch.manual_seed(s)``."""
    words = torch.empty((n + _BYTES_PER_WORD - 1) // _BYTES_PER_WORD, dtype=torch.int64)
    words.random_(generator=generator)
    return words.view(torch.uint8).view(-1, 8)[:, _LOW_BYTES].reshape(-1)[:n]


def keep_mask(
    shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Boolean mask, True with probability exactly ``1 - p`` (``p * 256`` must be an integer)."""
    threshold = round(p * 256)
    if threshold != p * 256:
        raise ValueError(f"keep_mask needs p to be a multiple of 1/256, got {p}.")
    return (random_bytes(math.prod(shape), generator) >= threshold).view(shape)


def fast_dropout(
    x: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Inverted dropout, like ``F.dropout(x, p, training)`` but with cheap byte masks.

    Exact for ``p`` a multiple of 1/256; any other ``p`` uses ``F.dropout`` itself (which
    draws from the global generator whatever ``generator`` is). The mask is drawn on the
    CPU from ``generator`` (``None``: the global one) and moved to ``x``'s device.
    """
    p = _check_p(p)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    if round(p * 256) != p * 256:
        return F.dropout(x, p, training=True)
    # The scale is folded into the mask so that forward and backward are one multiply each.
    scale = keep_mask(x.shape, p, generator).to(x.device, x.dtype).mul_(1.0 / (1.0 - p))
    return x * scale


class FastDropout(nn.Module):
    """Drop-in replacement for ``nn.Dropout(p)`` (see :func:`fast_dropout`)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = _check_p(p)
        #: Where the masks come from (``None``: torch's global CPU generator).
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training, self.generator)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def register_in_order(model: nn.Module, *first: str) -> None:
    """Put the submodules ``first`` ahead, in that order (the rest keep theirs): forward
    order, so the batch norms a subclass adds are not taken for the model's head (the
    last module with parameters, :func:`fedp13n.models.heads.default_head`). Weights and
    their initialisation are unchanged."""
    rest = {k: v for k, v in model._modules.items() if k not in first}
    model._modules = {**{k: model._modules[k] for k in first}, **rest}


class BatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that also trains on a batch of one example, as Keras's
    ``BatchNormalization`` (the layer of TFF's models) does, where PyTorch's refuses
    ("Expected more than 1 value per channel when training"): a real client with one
    training example (federated EMNIST has writers with two examples, one of them for
    training) or whose last batch holds one example must still train.

    A training batch of one ``(1, C)`` is normalized with its own statistics, as every
    batch is: mean the example, variance 0, so the output is ``bias`` (and the gradient
    of ``weight`` and of the input 0); the running mean moves toward the example and the
    running variance toward 0 (the biased variance, Keras's: the unbiased one PyTorch
    keeps is 0/0 for one value) by ``momentum`` (or the cumulative average when it is
    None), and the batch is counted. Every other input is ``nn.BatchNorm1d``'s, bit for bit.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.dim() == 2 and x.shape[0] == 1):
            return super().forward(x)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                if m is None:
                    m = 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1.0 - m).add_(x[0].detach().to(self.running_mean), alpha=m)
                self.running_var.mul_(1.0 - m)
        out = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + self.eps)
        return out * self.weight + self.bias if self.affine else out
