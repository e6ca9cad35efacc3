"""The GPU fast path: a whole training step (forward, loss, backward, optimizer update) replayed as one CUDA graph.

At batch 32 this MLP's step is a few dozen tiny kernels, and launching them from Python costs far more than
running them. Captured once as a CUDA graph, a step costs two input copies and one graph launch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class GraphedStep:
    """Runs ``step(x, y)``: eagerly for the first ``warmup`` calls, then as a replay of a CUDA graph of it.

    ``step`` must do device work only (no reads back to the host, no Python state that differs between calls):
    a replay repeats the captured kernels and nothing else. The graph is captured for the batch shape it first
    sees after the warmup; batches of another shape (an epoch's short last batch) run eagerly. The warmup and
    capture calls are real training steps on real batches, so the step sequence is the same as the eager one.
    """

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], None], warmup: int = 3):
        self.step, self.warmup = step, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.calls += 1
        if self.inputs is not None and x.shape == self.inputs[0].shape and y.shape == self.inputs[1].shape:
            self.inputs[0].copy_(x)
            self.inputs[1].copy_(y)
            self.graph.replay()
        elif self.inputs is not None:
            self.step(x, y)
        elif self.calls <= self.warmup:
            # before a capture, the kernels' lazy set-up (cuBLAS workspaces, optimizer state) must have run
            # once on a side stream, as torch.cuda.graph's documentation does it
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step(x, y)
            torch.cuda.current_stream().wait_stream(side)
        else:
            self.inputs = (x.clone(), y.clone())
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step(*self.inputs)
            self.graph.replay()  # a capture records the step without running it
