"""What a run gives a sweeper: its network's cost beside its scores (`model/params`, `model/latency_ms`, in
metrics.json), and the value of `optimized_metric`, or the values of a list of them (several objectives)."""

from __future__ import annotations

import statistics
import time


def parameter_count(net) -> int:
    """The network's trainable parameters, counted exactly."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def latency_ms(net, batch, budget_s: float = 0.05, most: int = 20) -> float:
    """The median time of a forward pass of `batch` through a copy of `net` on the CPU, on one thread (what
    the other cores do then matters less), after one warm-up pass; repeated for about `budget_s` seconds."""
    import copy

    import torch

    model = copy.deepcopy(net).cpu().eval()
    # in the network's own dtype: a run with trainer.precision=64-true or bf16-true trains it in that one
    batch = batch.to(next(model.parameters(), batch).dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            model(batch)
            times, end = [], time.perf_counter() + budget_s
            while len(times) < 3 or (len(times) < most and time.perf_counter() < end):
                start = time.perf_counter()
                model(batch)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return round(statistics.median(times) * 1000, 3)


# the same batch for every run, whatever its data.batch_size: the latencies of a search's networks compare
LATENCY_BATCH = 32


def model_metrics(net, datamodule) -> dict:
    """The network's size, and its CPU latency on a batch of LATENCY_BATCH images of the data's size."""
    import torch

    batch = torch.zeros(LATENCY_BATCH, datamodule.input_size)  # the networks take flattened images
    return {"model/params": parameter_count(net), "model/latency_ms": latency_ms(net, batch)}


def objective_names(optimized_metric) -> list[str]:
    """`optimized_metric` as a list of names: one name, or a list of them."""
    if optimized_metric is None:
        return []
    if isinstance(optimized_metric, str):
        return [optimized_metric]
    return [str(name) for name in optimized_metric]


def objective_values(metrics: dict, optimized_metric) -> float | list[float] | None:
    """What a run returns to a sweeper: the value of `optimized_metric` (None if the run has none), or, for
    a list of names, the list of their values in that order (None if the run recorded one of them not)."""
    if optimized_metric is None or isinstance(optimized_metric, str):
        return metrics.get(optimized_metric)
    values = [metrics.get(name) for name in objective_names(optimized_metric)]
    return None if any(v is None for v in values) else [float(v) for v in values]

