"""Does local training help or hurt a trained global model? A plain torch loop, outside
fedp13n's client program: each of the first N writers of the EMNIST sample trains the
run's global model on its own train data (SGD, batch 20, E epochs) and is evaluated on its
own test data; prints the mean test accuracy before and after, per learning rate.

    python bench/local_stability.py RUN_DIR --model dnn --lr 0.05 0.02 0.01 0.005

Used to choose bench/methods' model (bench/README.md, "pFL methods on the EMNIST sample").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedp13n.models import get_model_fn

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "femnist_sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run (global_weights.pt)")
    parser.add_argument("--model", default="conv_dropout")
    parser.add_argument("--lr", type=float, nargs="+", default=[0.05, 0.02, 0.01, 0.005])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--writers", type=int, default=40)
    parser.add_argument("--data-dir", type=Path, default=SAMPLE)
    args = parser.parse_args()
    import h5py

    weights = torch.load(args.run_dir / "global_weights.pt", weights_only=True)
    train = h5py.File(args.data_dir / "fed_emnist_train.h5")["examples"]
    test = h5py.File(args.data_dir / "fed_emnist_test.h5")["examples"]
    writers = sorted(train)[: args.writers]
    for lr in args.lr:
        before, after = [], []
        for c in writers:
            torch.manual_seed(0)
            x, y = (torch.tensor(train[c][k][()]) for k in ("pixels", "label"))
            xt, yt = (torch.tensor(test[c][k][()]) for k in ("pixels", "label"))
            model = get_model_fn(args.model)(num_classes=62)
            model.load_state_dict(weights)
            before.append(_accuracy(model, xt, yt))
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            model.train()
            for _ in range(args.epochs):
                order = torch.randperm(len(x))
                for i in range(0, len(x), 20):
                    b = order[i : i + 20]
                    opt.zero_grad()
                    F.cross_entropy(model(x[b]), y[b].long()).backward()
                    opt.step()
            after.append(_accuracy(model, xt, yt))
        print(f"lr {lr}: {len(writers)} writers, test accuracy {np.mean(before):.3f} -> "
              f"{np.mean(after):.3f} after {args.epochs} local epochs")  # fmt: skip


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y.long()).float().mean())


if __name__ == "__main__":
    main()
