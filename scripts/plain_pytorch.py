"""The reference: the tutorial's experiment as one plain PyTorch loop over in-memory tensors.

Same data (torchvision's MNIST files, pixels scaled to [0, 1], seeded 48k/12k split), same 784-128-10
MLP, Adam 1e-3, batch 32, 10 epochs with validation every epoch, then the official test set. No
Lightning, no Hydra: the benchmarks compare mnist-lit against this script, run side by side.

    python scripts/plain_pytorch.py --root ../shared/mnist --epochs 10 --batch-size 32
"""

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.datasets import MNIST


def load(root: str, train: bool, device: torch.device):
    ds = MNIST(root, train=train, download=False)
    x = ds.data.reshape(len(ds.data), -1).to(device=device, dtype=torch.float32).div_(255)
    return x, ds.targets.to(device)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024):
    model.eval()
    loss_sum, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum")
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
    model.train()
    return (loss_sum / len(x)).item(), (correct / len(x)).item()


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-size", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON line of results")
    return parser.parse_args()


def experiment(args: argparse.Namespace):
    """The seeded 48k/12k split, the test set and the tutorial's MLP on args.device (as bare_lightning.py)."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    x_all, y_all = load(args.root, True, device)
    perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(args.seed)).to(device)
    val_idx, train_idx = perm[: args.val_size], perm[args.val_size :]
    train, val = (x_all[train_idx], y_all[train_idx]), (x_all[val_idx], y_all[val_idx])
    test = load(args.root, False, device)

    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    for layer in (model[0], model[2]):  # as Keras' Dense, like mnist-lit's default
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return device, train, val, test, model.to(device)


def report(args, device, model, fit_seconds: float, steps: int, val_acc: float, test) -> None:
    test_loss, test_acc = evaluate(model, *test)
    result = {
        "fit_seconds": fit_seconds,
        "steps": steps,
        "ms_per_step": 1000 * fit_seconds / steps,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }
    print(json.dumps(result) if args.json else result)


def main() -> None:
    args = arguments(__doc__)
    device, (x_train, y_train), (x_val, y_val), test, model = experiment(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    steps = 0
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), device=device)
        for i in range(0, len(x_train), args.batch_size):
            idx = order[i : i + args.batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        val_loss, val_acc = evaluate(model, x_val, y_val)
        if not args.json:
            print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.4f}")
    fit_seconds = time.perf_counter() - start
    report(args, device, model, fit_seconds, steps, val_acc, test)


if __name__ == "__main__":
    main()
