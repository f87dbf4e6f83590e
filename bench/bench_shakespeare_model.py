"""Characters/s of TFF's Shakespeare model (``create_recurrent_model(90)``) on the CPU.

One training step = forward, backward and an SGD step on a batch of B 80-character
sequences (random ids, the first sequence padded after 50 characters as TFF's last
sequence of a snippet is); characters/s = B * 80 / step time. Measured three ways:

* ``fused``: the model as fedp13n runs a client (torch's fused LSTM kernel: padding only at
  the ends, outside ``torch.func``);
* ``loop``: the same model forced onto its plain-op time loop (what ``torch.func`` batches);
* ``vmap``: K clients' gradients at once, ``vmap(grad(...))`` over stacked weights (the
  loop path), the batched engine's way.

Best of ``--repeat`` runs of ``--steps`` steps each.

    python bench/bench_shakespeare_model.py --batches 4,10 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fedp13n.models import shakespeare
from fedp13n.models.shakespeare import create_recurrent_model

SEQ = 80
VOCAB = 90


def _best(step: Callable[[], object], repeat: int, steps: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t) / steps)
    return min(times)


def _batch(*lead: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(1, VOCAB, (*lead, SEQ))
    x[..., 0, 50:] = 0
    return x, torch.randint(0, VOCAB, (*lead, SEQ))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="4,10", help="batch sizes, comma-separated")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--k", type=int, default=8, help="clients in the vmap measurement")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s)"
    )
    model = create_recurrent_model(VOCAB)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fused = shakespeare._fused_applies  # noqa: SLF001 - forced off for the loop row
    params = {n: torch.stack([p.detach()] * args.k) for n, p in model.named_parameters()}
    client_grads = vmap(grad(lambda p, x, y: F.cross_entropy(functional_call(model, p, (x,)), y)))
    for b in (int(v) for v in args.batches.split(",")):
        x, y = _batch(b)

        def step(x=x, y=y) -> None:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

        for name, applies in (("fused", fused), ("loop", lambda *_: False)):
            shakespeare._fused_applies = applies  # noqa: SLF001
            try:
                s = _best(step, args.repeat, args.steps)
            finally:
                shakespeare._fused_applies = fused  # noqa: SLF001
            print(f"{name:5s} B={b:3d}: {s * 1e3:7.0f} ms/step {b * SEQ / s:10,.0f} chars/s")
        xk, yk = _batch(args.k, b)
        s = _best(lambda xk=xk, yk=yk: client_grads(params, xk, yk), args.repeat, args.steps)
        print(
            f"vmap  B={b:3d} K={args.k}: {s * 1e3:5.0f} ms/step "
            f"{args.k * b * SEQ / s:10,.0f} chars/s"
        )


if __name__ == "__main__":
    main()
