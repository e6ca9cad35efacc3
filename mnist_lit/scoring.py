"""A network's class probabilities on a labelled set, and the scores derived from them (accuracy, confusions)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Evaluation:
    """A network's class probabilities on a labelled set, and the scores derived from them."""

    probs: torch.Tensor  # (N, classes)
    labels: torch.Tensor  # (N,)
    loss: float  # mean cross-entropy

    @property
    def num_classes(self) -> int:
        return self.probs.shape[1]

    @property
    def predicted(self) -> torch.Tensor:
        return self.probs.argmax(1)

    @property
    def confidence(self) -> torch.Tensor:
        """The probability the network gave its own prediction."""
        return self.probs.max(1).values

    @property
    def accuracy(self) -> float:
        return (self.predicted == self.labels).float().mean().item()

    @property
    def confusion(self) -> torch.Tensor:
        """(classes, classes) counts: row = true class, column = predicted class."""
        n = self.num_classes
        return torch.bincount(self.labels * n + self.predicted, minlength=n * n).reshape(n, n)

    @property
    def per_class_accuracy(self) -> torch.Tensor:
        confusion = self.confusion
        return confusion.diag() / confusion.sum(1).clamp(min=1)

    def most_confident_errors(self, count: int) -> torch.Tensor:
        """Indices of up to `count` misclassified examples, the most confidently wrong first."""
        wrong = torch.nonzero(self.predicted != self.labels).flatten()
        order = self.confidence[wrong].argsort(descending=True)
        return wrong[order[:count]]


@torch.inference_mode()
def evaluate_net(
    net: nn.Module, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000
) -> Evaluation:
    """The network's probabilities on (N, features) inputs, in eval mode (restored afterwards), on the CPU."""
    was_training = net.training
    net.eval()
    try:
        logits = torch.cat([net(features[i : i + batch_size]) for i in range(0, len(features), batch_size)])
    finally:
        net.train(was_training)
    logits, labels = logits.float().cpu(), labels.cpu()
    loss = F.cross_entropy(logits, labels).item()
    return Evaluation(probs=logits.softmax(1), labels=labels, loss=loss)
