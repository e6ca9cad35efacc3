"""A real two-objective search end to end (hparams_search=optuna_pareto: maximise val/acc_best, minimise
model/params) on synthetic digits: the trials' values are what their runs recorded, and the Pareto front
is the same in the study, in optimization_results.yaml, in summarize's table and in optuna-dashboard over
HTTP."""

import sys
from pathlib import Path

import pytest
import yaml
from conftest import SYNTHETIC_OVERRIDES, free_port, get_json, local_server, run_cli
from test_sweeps import metrics

from mnist_lit.search.study import load_study


@pytest.mark.slow
def test_two_objective_search_pareto_front_in_summarize_and_the_dashboard(synthetic_root, tmp_path):
    sweep_dir = tmp_path / "search"
    proc = run_cli("mnist_lit.train", "-m", f"data.root={synthetic_root}", *SYNTHETIC_OVERRIDES,
                   "callbacks=none", "threads=1", "hparams_search=optuna_pareto", "hydra.sweeper.n_trials=4",
                   "trainer.max_epochs=1", "model.net.hidden_sizes.0=choice(8, 16, 32)",
                   f"hydra.sweep.dir={sweep_dir}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_study(sweep_dir)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val/acc_best", "model/params"]
    for trial in study.trials:  # each trial's values: what its run recorded, in the order of optimized_metric
        m = metrics(sweep_dir / str(trial.number))
        assert trial.values == [pytest.approx(m["best_val_acc"]), m["trainable_params"]]
        assert m["metrics"]["model/params"] == m["trainable_params"]
        assert m["trainable_params"] == 784 * trial.params["model.net.hidden_sizes.0"] \
            + trial.params["model.net.hidden_sizes.0"] * 11 + 10
        assert m["metrics"]["model/latency_ms"] > 0
    front = sorted(t.number for t in study.best_trials)
    assert front and len(study.trials) == 4
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert [t["number"] for t in results["pareto_front"]] == front

    # summarize: the Pareto front, each objective by name
    proc = run_cli("mnist_lit.summarize", str(sweep_dir), "--csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables = proc.stdout.strip().split("\n\n")
    pareto = next(t for t in tables if t.startswith("Pareto trial,"))
    header, *rows = pareto.splitlines()
    assert header.startswith("Pareto trial,val/acc_best (maximize),model/params (minimize),")
    assert sorted(int(row.split(",")[0]) for row in rows) == front
    for row in rows:
        trial = study.trials[int(row.split(",")[0])]
        assert int(row.split(",")[2]) == trial.values[1]

    # optuna-dashboard over HTTP: the study's best trials are its Pareto front
    storage = next(str(sweep_dir / name) for name in ("optuna.journal", "optuna.db")
                   if (sweep_dir / name).is_file())
    storage = f"sqlite:///{storage}" if storage.endswith(".db") else storage
    port = free_port()
    command = [str(Path(sys.executable).with_name("optuna-dashboard")), storage, "--host", "127.0.0.1",
               "--port", str(port)]
    studies_url = f"http://127.0.0.1:{port}/api/studies"
    with local_server(command, lambda: get_json(studies_url) is not None, "optuna-dashboard", timeout=60):
        summaries = get_json(studies_url)["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["mnist_lit"]
        detail = get_json(f"{studies_url}/{summaries[0]['study_id']}")
    assert detail["directions"] == ["maximize", "minimize"]
    assert detail["objective_names"] == ["val/acc_best", "model/params"]
    assert sorted(t["number"] for t in detail["best_trials"]) == front
    for shown in detail["best_trials"]:
        assert shown["values"] == pytest.approx(study.trials[shown["number"]].values)
