"""mnist_lit.summarize beyond one grid sweep (tests/test_sweeps.py has those): a multi-objective search's
Pareto front, its parameters' importances, several sweeps side by side; and what a run gives a sweeper of
several objectives (mnist_lit/runs/objectives.py)."""

import math
import statistics

import optuna
import pytest
import torch
import yaml
from conftest import run_cli
from test_sweeps import fake_job

from mnist_lit.search.study import SWEEPER_TARGET
from mnist_lit.summarize import main

OBJECTIVES = ["val/acc_best", "model/params"]


def fake_search(sweep_dir, trials, directions=("maximize", "minimize"), objectives=OBJECTIVES):
    """A search's folder as the sweeper leaves it: multirun.yaml naming the sweeper and its study (made here
    with Optuna directly), and job k = trial k, each with its overrides, config and metrics.json."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{sweep_dir / 'study.db'}"
    direction = list(directions) if len(directions) > 1 else directions[0]
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": SWEEPER_TARGET, "study_name": "mnist_lit", "storage": url,
                    "direction": direction},
        "overrides": {"hydra": [], "task": ["hparams_search=optuna"]}}}))
    study = optuna.create_study(study_name="mnist_lit", storage=url, directions=list(directions))
    study.set_metric_names(objectives)
    space = {"model.optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "model.net.hidden_sizes.0": optuna.distributions.CategoricalDistribution([32, 64, 128])}
    for number, (params, values) in enumerate(trials):
        if params is not None:
            study.enqueue_trial(params)
        trial = study.ask(space)
        if values is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, values)
        # as a run records them: the parameter count an integer
        metrics = {k: int(v) if k == "model/params" else v
                   for k, v in zip(objectives, values or [], strict=False)}
        fake_job(sweep_dir, number, [f"{k}={v}" for k, v in trial.params.items()] + ["hparams_search=optuna"],
                 {"status": "completed" if values else "pruned",
                  "best_val_acc": metrics.get("val/acc_best"), "metrics": metrics})
        (sweep_dir / str(number) / ".hydra" / "config.yaml").write_text(
            yaml.safe_dump({"optimized_metric": objectives if len(objectives) > 1 else objectives[0]}))
    return study


def test_pareto_front_and_importances_of_a_two_objective_search(tmp_path, capsys):
    trials = [({"model.optimizer.lr": 1e-3, "model.net.hidden_sizes.0": 128}, [0.97, 101770.0]),
              ({"model.optimizer.lr": 1e-3, "model.net.hidden_sizes.0": 32}, [0.95, 25450.0]),
              ({"model.optimizer.lr": 1e-2, "model.net.hidden_sizes.0": 128}, [0.90, 101770.0]),  # dominated
              ({"model.optimizer.lr": 3e-3, "model.net.hidden_sizes.0": 64}, [0.96, 50890.0]),
              ({"model.optimizer.lr": 1e-4, "model.net.hidden_sizes.0": 32}, None)]  # pruned
    study = fake_search(tmp_path, trials)
    assert sorted(t.number for t in study.best_trials) == [0, 1, 3]
    main([str(tmp_path), "--csv"])
    out, err = capsys.readouterr()
    jobs, pareto, importances = out.strip().split("\n\n")
    # the jobs' table shows the second objective beside the accuracies
    assert jobs.splitlines()[0] == ("job,model.optimizer.lr,model.net.hidden_sizes.0,val/acc_best,test/acc,"
                                    "model/params,fit s,status,error")
    assert jobs.splitlines()[1].startswith("0,0.001,128,0.9700,,101770,")
    # the Pareto front: each objective by name and direction, best first on the first; the parameters
    lines = pareto.splitlines()
    assert lines[0] == ("Pareto trial,val/acc_best (maximize),model/params (minimize),model.optimizer.lr,"
                        "model.net.hidden_sizes.0")
    assert lines[1:] == ["0,0.9700,101770,0.001,128", "3,0.9600,50890,0.003,64", "1,0.9500,25450,0.001,32"]
    # each parameter's importance for each objective, from Optuna's default evaluator
    header, *rows = importances.splitlines()
    assert header == "parameter,importance for val/acc_best,importance for model/params"
    assert sorted(row.split(",")[0] for row in rows) == ["model.net.hidden_sizes.0", "model.optimizer.lr"]
    for i, name in enumerate(OBJECTIVES):
        sign = -1 if i == 0 else 1  # the evaluator takes lower as better: accuracy is negated
        expected = optuna.importance.get_param_importances(study,
                                                           target=lambda t, i=i, s=sign: s * t.values[i])
        assert {row.split(",")[0]: float(row.split(",")[i + 1]) for row in rows} == pytest.approx(
            {k: round(v, 3) for k, v in expected.items()}, abs=1e-3), name
    assert "4 completed, 1 pruned" in err and "Optuna best" not in err
    assert "parameter importances: Optuna's default evaluator (PED-ANOVA in Optuna 5) on 4 completed" in err


def test_pareto_front_from_the_results_file_when_the_study_cannot_be_read(tmp_path, capsys):
    fake_search(tmp_path, [({"model.optimizer.lr": 1e-3, "model.net.hidden_sizes.0": 128}, [0.97, 101770.0])])
    (tmp_path / "study.db").unlink()  # a database server out of reach, say
    (tmp_path / "optimization_results.yaml").write_text(yaml.safe_dump({"pareto_front": [
        {"number": 0, "values": [0.97, 101770.0], "params": {"model.optimizer.lr": 0.001}}]}))
    main([str(tmp_path)])
    out, err = capsys.readouterr()
    assert "| Pareto trial | val/acc_best (maximize) | model/params (minimize) | model.optimizer.lr |" in out
    assert "| 0 | 0.9700 | 101770 | 0.001 |" in out
    assert "the study was not read" in err and "cannot read the study 'mnist_lit'" in err


def test_importances_of_too_few_trials_are_a_note(tmp_path, capsys):
    fake_search(tmp_path, [({"model.optimizer.lr": 1e-3, "model.net.hidden_sizes.0": 128}, [0.97])],
                directions=("maximize",), objectives=["val/acc_best"])
    main([str(tmp_path), "--csv"])
    out, err = capsys.readouterr()
    assert len(out.strip().split("\n\n")) == 1  # the jobs only: no Pareto front of one objective
    assert "parameter importances: too few completed trials (1) to tell the parameters apart" in err


def test_a_stopped_trial_run_again_is_a_rerun_not_an_interruption(tmp_path, capsys):
    from mnist_lit.search.worker import fail_and_retry

    lr, width = "model.optimizer.lr", "model.net.hidden_sizes.0"
    study = fake_search(tmp_path, [({lr: 1e-3, width: 128}, [0.97]), ({lr: 3e-3, width: 64}, [0.96])],
                        directions=("maximize",), objectives=["val/acc_best"])
    # trial 2's worker was requeued mid-trial: its job stopped "interrupted", its parameters ran as trial 3
    space = {lr: optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             width: optuna.distributions.CategoricalDistribution([32, 64, 128])}
    stopped = study.ask(space)
    fake_job(tmp_path, 2, [f"{k}={v}" for k, v in stopped.params.items()], {"status": "interrupted"})
    assert fail_and_retry(study, study.trials[2], interrupted=stopped)
    again = study.ask(space)
    assert again.params == stopped.params
    study.tell(again, 0.95)
    fake_job(tmp_path, 3, [f"{k}={v}" for k, v in again.params.items()], done(0.95, None))
    main([str(tmp_path), "--csv"])
    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if line.startswith("2,"))
    assert row.endswith(",rerun,interrupted; its parameters ran again as trial 3")
    assert f"4 jobs in {tmp_path}: 3 completed, 1 rerun" in err

    main([str(tmp_path), str(tmp_path)])  # side by side as well
    assert f"4 jobs in {tmp_path}: 3 completed, 1 rerun" in capsys.readouterr().err


def done(val, test, **extra):
    return {"status": "completed", "best_val_acc": val, "test_acc": test, "fit_seconds": 3.0,
            "metrics": {"val/acc_best": val, "test/acc": test, **extra}}


def test_sweeps_side_by_side_with_seeds_and_importances(tmp_path, capsys):
    a, b, search = tmp_path / "a", tmp_path / "b", tmp_path / "search"
    fake_job(a, 0, ["model.optimizer.lr=0.1", "seed=1"], done(0.90, 0.80))
    fake_job(a, 1, ["model.optimizer.lr=0.1", "seed=2"], done(0.94, 0.84))
    fake_job(a, 2, ["model.optimizer.lr=0.01", "seed=1"], done(0.97, 0.96))
    fake_job(a, 3, ["model.optimizer.lr=0.01", "seed=2"], {"status": "failed", "error": "x"})
    fake_job(b, 0, ["data.batch_size=64", "seed=1"], done(0.98, 0.97))
    fake_job(b, 1, ["data.batch_size=64", "seed=2"], done(0.96, 0.95))
    scores = [(0.95, 5e4), (0.97, 1e5), (0.93, 2e4), (0.96, 4e5), (0.90, 3e4), (0.91, 1e5)]
    study = fake_search(search, [(None, [v, p]) for v, p in scores])
    main([str(a), str(b), str(search)])
    out, err = capsys.readouterr()
    side_by_side, pareto, importances = out.strip().split("\n\n")
    lines = side_by_side.splitlines()
    # the columns: whatever differs between any jobs of them all (blank: the config's default), seeds together
    assert lines[0] == ("| sweep | model.optimizer.lr | data.batch_size | model.net.hidden_sizes.0 | "
                        "hparams_search | seeds | val/acc_best (mean ± std) | test/acc (mean ± std) | "
                        "model/params (mean ± std) |")
    std = statistics.stdev([0.90, 0.94])
    assert f"| {a} | 0.1 |  |  |  | 2 | 0.9200 ± {std:.4f} | 0.8200 ± {std:.4f} |  |" in lines
    # the failed seed is left out
    assert f"| {a} | 0.01 |  |  |  | 1 | 0.9700 ± 0.0000 | 0.9600 ± 0.0000 |  |" in lines
    std = statistics.stdev([0.98, 0.96])
    assert f"| {b} |  | 64 |  |  | 2 | 0.9700 ± {std:.4f} | 0.9600 ± {std:.4f} |  |" in lines
    rows = [line for line in lines if line.startswith(f"| {search} |")]
    assert len(rows) == 6 and rows[1].endswith("| 1 | 0.9700 ± 0.0000 |  | 100000 ± 0 |")
    # the search's own tables, its folder named in a first column
    front = sorted(study.best_trials, key=lambda t: -t.values[0])
    assert [line.split(" | ")[1] for line in pareto.splitlines()[2:]] == [str(t.number) for t in front]
    assert pareto.splitlines()[0].startswith("| sweep | Pareto trial | val/acc_best (maximize) |")
    assert importances.splitlines()[0] == ("| sweep | parameter | importance for val/acc_best | "
                                           "importance for model/params |")
    assert all(line.startswith(f"| {search} | model.") for line in importances.splitlines()[2:])
    assert f"4 jobs in {a}: 3 completed, 1 failed" in err and f"6 jobs in {search}: 6 completed" in err
    assert f"{search}: parameter importances: Optuna's default evaluator (PED-ANOVA in Optuna 5) on 6" in err


def test_plot_of_several_sweeps_is_refused(tmp_path, capsys):
    fake_job(tmp_path / "a", 0, ["seed=1"], done(0.9, 0.9))
    fake_job(tmp_path / "b", 0, ["seed=1"], done(0.9, 0.9))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--plot", str(tmp_path / "p.png")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: --plot draws the jobs of one sweep")


def test_objective_values_and_the_network_cost():
    from mnist_lit.model import MLP
    from mnist_lit.runs.objectives import LATENCY_BATCH, latency_ms, objective_values, parameter_count

    metrics = {"val/acc_best": 0.97, "model/params": 101770}
    assert objective_values(metrics, "val/acc_best") == 0.97
    assert objective_values(metrics, ["val/acc_best", "model/params"]) == [0.97, 101770.0]
    assert objective_values(metrics, ["model/params", "val/acc_best"]) == [101770.0, 0.97]  # in that order
    assert objective_values(metrics, ["val/acc_best", "test/acc"]) is None  # a trial with no value: failed
    net = MLP(hidden_sizes=(128,))
    assert parameter_count(net) == 784 * 128 + 128 + 128 * 10 + 10 == 101770
    next(net.parameters()).requires_grad_(False)  # a frozen layer's weights are not counted
    assert parameter_count(net) == 101770 - 784 * 128
    ms = latency_ms(MLP(), torch.zeros(LATENCY_BATCH, 784))
    assert math.isfinite(ms) and ms > 0


def test_an_unknown_optimized_metric_is_named_before_the_run(tmp_path):
    proc = run_cli("mnist_lit.train", "optimized_metric=[val/acc_best,model/param]",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    said = proc.stderr
    assert said.startswith("error: invalid config: optimized_metric=[val/acc_best,model/param]: no metric "
                           "model/param; a run records val/acc_best, val/acc, val/loss,"), said
    assert "model/params, model/latency_ms" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "metrics.json").exists()
