"""The Optuna search (hydra_plugins/mnist_lit_optuna) end to end on synthetic data: trials, pruning, resuming
a study, parallel trials, the dashboard, and confirming the best configurations over seeds."""

import shutil
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import SYNTHETIC_OVERRIDES, free_port, get_json, local_server, made_once, run_cli
from test_runs import slurm  # noqa: F401 (the fixture: a running local SLURM, or a skip that says why)
from test_sweeps import hparams_of, metrics, session_status

# short trials: these tests are about the search, not the training
SHORT = [*SYNTHETIC_OVERRIDES, "callbacks=none", "threads=1", "hparams_search=optuna"]
PARAMS = {"model.optimizer.lr", "data.batch_size", "model.net.hidden_sizes.0", "model.net.dropout"}


def search(root, sweep_dir, *overrides, timeout=300):
    return run_cli("mnist_lit.train", "-m", f"data.root={root}", *SHORT, *overrides,
                   f"hydra.sweep.dir={sweep_dir}", timeout=timeout)


def study_of(sweep_dir):
    from mnist_lit.search.study import default_storage, storage

    return optuna.load_study(study_name="mnist_lit", storage=storage(default_storage(sweep_dir)))


@pytest.fixture(scope="session")
def searched(synthetic_root, tmp_path_factory):
    """A finished 3-trial, 2-epoch search (the default median pruner waits for 4 trials: none pruned), and its
    console output."""
    def run_search(sweep_dir: Path) -> None:
        proc = search(synthetic_root, sweep_dir, "hydra.sweeper.n_trials=3", "trainer.max_epochs=2")
        assert proc.returncode == 0, proc.stderr[-3000:]
        sweep_dir.with_name("search.output").write_text(proc.stdout + proc.stderr)

    sweep_dir = made_once(tmp_path_factory, "search", run_search)
    return sweep_dir, sweep_dir.with_name("search.output").read_text()


def test_search_space_from_hydra_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from mnist_lit.search.space import parse

    space, fixed = parse(["lr=tag(log, interval(1e-4, 1e-2))", "bs=choice(32, 64)", "p=interval(0, 0.5)",
                          "h=range(16, 80, 16)", "w=shuffle(range(1, 4))", "data.root=x", "bs=choice(8, 16)"])
    assert sorted(space.pop("w").choices) == [1, 2, 3]  # shuffle(): a categorical, in a random order
    assert space == {
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "bs": CategoricalDistribution([8, 16]),  # the last of a key wins (the command line over the yaml)
        "p": FloatDistribution(0.0, 0.5),
        "h": IntDistribution(16, 64, step=16),  # Hydra's range excludes its stop
    }
    assert fixed == {"data.root": "x"}


@pytest.mark.parametrize("override, said", [
    ("lr=interval(1e-2, 1e-4)", "lr=interval(1e-2, 1e-4): "),
    ("lr=tag(log, interval(0, 1e-2))", "lr=tag(log, interval(0, 1e-2)): "),
    ("bs=range(64, 64)", "bs=range(64, 64) is empty"),
])
def test_an_impossible_search_space_is_named(override, said):
    from mnist_lit.search.space import SearchSpaceError, parse

    with pytest.raises(SearchSpaceError) as err:
        parse([override])
    message = str(err.value)
    assert message.startswith(said) and ("lower end first" in message or "empty" in message)


def test_search_trials_report_every_epoch_and_never_test(searched):
    sweep_dir, output = searched
    assert "Best parameters" in output
    # each trial's last line
    assert output.count("not tested (test=false)") == 3 and "test/acc nan" not in output
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == PARAMS and results["trials"] == {"complete": 3}
    jobs = [metrics(sweep_dir / str(i)) for i in range(3)]
    assert not (sweep_dir / "3").exists()
    assert all(m["status"] == "completed" and m["test_acc"] is None for m in jobs)  # test=false in a search
    study = study_of(sweep_dir)
    assert study.metric_names == ["val/acc_best"]  # optuna-dashboard's name for the objective
    for trial, m in zip(study.trials, jobs, strict=True):
        # job k is trial k; its value is val/acc_best, the best of the val/acc it reported after each epoch
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.value == pytest.approx(m["best_val_acc"])
        assert sorted(trial.intermediate_values) == [0, 1]
        assert max(trial.intermediate_values.values()) == pytest.approx(m["best_val_acc"])
    assert results["best_value"] == pytest.approx(max(m["best_val_acc"] for m in jobs))
    # TensorBoard's HPARAMS table puts the search's parameters first; a search never tests
    _, tags, _, differs = hparams_of(sweep_dir / "0" / "tensorboard")
    assert differs == {"optimizer/lr", "data/batch_size", "net/hidden_sizes", "net/dropout"}
    assert tags[0] == "val/acc_best" and not any(tag.startswith("test/") for tag in tags)


@pytest.mark.slow
def test_pruned_trials_are_recorded_as_pruned(synthetic_root, tmp_path):
    # a pruner that stops every trial after its first epoch
    proc = search(synthetic_root, tmp_path, "hydra.sweeper.n_trials=2", "trainer.max_epochs=3",
                  "hydra/sweeper/pruner=none", "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                  "+hydra.sweeper.pruner.lower=1.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr  # pruned: no error
    for i in (0, 1):
        m = metrics(tmp_path / str(i))
        assert m["status"] == "pruned" and m["epochs"] == 0
        assert f"trial {i} pruned after epoch 1" in m["pruned"]  # counted from 1
        assert m["best_val_acc"] is not None
        # in TensorBoard's HPARAMS table beside the completed trials, with the scores they reached
        _, tags, _, _ = hparams_of(tmp_path / str(i) / "tensorboard")
        assert tags[0] == "val/acc_best"
        assert session_status(tmp_path / str(i) / "tensorboard") == "STATUS_FAILURE"
    assert [t.state for t in study_of(tmp_path).trials] == [optuna.trial.TrialState.PRUNED] * 2
    proc = run_cli("mnist_lit.summarize", str(tmp_path), "--csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.rsplit(",", 2)[1] for line in proc.stdout.splitlines()[1:]] == ["pruned", "pruned"]
    assert "2 pruned" in proc.stderr


@pytest.mark.slow
def test_resume_continues_the_study_and_retries_interrupted_trials(searched, tmp_path):
    sweep_dir = tmp_path / "search"
    shutil.copytree(searched[0], sweep_dir)
    # a trial that a killed sweep left RUNNING (its job never wrote anything): its heartbeat stops
    study = study_of(sweep_dir)
    stale = study.ask(study.trials[0].distributions)
    proc = run_cli("mnist_lit.train", "-m", f"resume={sweep_dir}", "hydra.sweeper.n_trials=4",
                   "hydra.sweeper.heartbeat_interval=1", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trial 3: no heartbeat for" in proc.stdout + proc.stderr
    trials = study_of(sweep_dir).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert trials[4].params == stale.params and trials[4].user_attrs["retry_of"] == 3
    # the resumed trial ran with the search's own overrides, in the same sweep folder
    assert metrics(sweep_dir / "4")["status"] == "completed" and not (sweep_dir / "3").exists()
    ran = yaml.safe_load((sweep_dir / "4" / ".hydra" / "overrides.yaml").read_text())
    assert "trainer.max_epochs=2" in ran and "hparams_search=optuna" in ran
    # the summary's columns are what the trials varied, not how the later ones were started (resume=)
    proc = run_cli("mnist_lit.summarize", str(sweep_dir), "--csv")
    assert proc.returncode == 0 and "resume" not in proc.stdout.splitlines()[0], proc.stdout

    # n_trials reached: running the same command again adds nothing
    proc = run_cli("mnist_lit.train", "-m", f"resume={sweep_dir}", "hydra.sweeper.n_trials=4", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 of 4 trials done" in proc.stdout + proc.stderr and len(study_of(sweep_dir).trials) == 5


@pytest.mark.slow
def test_two_trials_in_parallel_with_joblib(synthetic_root, tmp_path):
    proc = search(synthetic_root, tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                  "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    trials = study_of(tmp_path).trials
    # both reported from their worker processes to the study, through the journal file
    assert [(t.state.name, sorted(t.intermediate_values)) for t in trials] == [("COMPLETE", [0, 1])] * 2
    assert {metrics(tmp_path / str(i))["status"] for i in (0, 1)} == {"completed"}


def test_combinations_of_a_grid():
    from mnist_lit.search.space import SearchSpaceError, combinations, parse

    space, _ = parse(["seed=1,2", "w=range(16, 48, 16)", "p=range(0.0, 0.3, 0.1)"])
    grid = combinations(space)
    assert len(grid) == 2 * 2 * 3 and len({tuple(c.items()) for c in grid}) == 12
    assert {c["seed"] for c in grid} == {1, 2} and {c["w"] for c in grid} == {16, 32}
    assert sorted({c["p"] for c in grid}) == pytest.approx([0.0, 0.1, 0.2])
    with pytest.raises(SearchSpaceError, match="lr: a grid runs lists of values, not an interval: list them"):
        combinations(parse(["lr=tag(log, interval(1e-4, 1e-2))"])[0])


@pytest.mark.slow
def test_a_grid_run_by_two_workers_runs_each_combination_once_and_resumes(synthetic_root, tmp_path):
    grid = ["hparams_search=optuna_grid", "seed=1,2", "model.optimizer.lr=1e-3,3e-3", "trainer.max_epochs=1"]
    workers = ["hydra.sweeper.n_jobs=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    proc = search(synthetic_root, tmp_path, *grid, *workers)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Grid of 4 combinations (n_trials=4)" in proc.stdout + proc.stderr
    trials = study_of(tmp_path).trials
    combos = sorted((t.params["seed"], t.params["model.optimizer.lr"]) for t in trials)
    assert combos == [(1, 1e-3), (1, 3e-3), (2, 1e-3), (2, 3e-3)]
    assert {t.state.name for t in trials} == {"COMPLETE"}
    for t in trials:  # job k is trial k, tested as in a plain grid, its value the study's
        m = metrics(tmp_path / str(t.number))
        assert (m["status"], m["seed"], m["best_val_acc"]) == ("completed", t.params["seed"], t.value)
        assert m["test_acc"] is not None
    # the same command again: every combination is in the study, none runs again
    again = search(synthetic_root, tmp_path, *grid)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(study_of(tmp_path).trials) == 4 and not (tmp_path / "4").exists()
    # an interval is no grid: one paragraph, nothing run
    proc = search(synthetic_root, tmp_path / "interval", *grid, "model.net.dropout=interval(0, 0.5)")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "model.net.dropout: a grid runs lists of values, not an interval" in proc.stderr
    assert not (tmp_path / "interval" / "0").exists()


def test_search_refuses_to_optimize_a_test_metric(synthetic_root, tmp_path):
    proc = search(synthetic_root, tmp_path, "optimized_metric=test/acc")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert proc.stderr.startswith("error: optimized_metric=test/acc: the search must optimize a validation")
    assert not (tmp_path / "0").exists()


def test_dashboard_serves_the_study(searched):
    sweep_dir, output = searched
    port = free_port()
    # the journal file's path, as the search's log line gives it
    assert f"Watch it with: optuna-dashboard {sweep_dir / 'optuna.journal'}" in output
    command = [str(Path(sys.executable).with_name("optuna-dashboard")),
               str(sweep_dir / "optuna.journal"), "--host", "127.0.0.1", "--port", str(port)]
    studies_url = f"http://127.0.0.1:{port}/api/studies"
    with local_server(command, lambda: get_json(studies_url) is not None, "optuna-dashboard", timeout=60):
        studies = get_json(studies_url)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["mnist_lit"]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
        study = study_of(sweep_dir)
        assert [(t["number"], t["state"], t["values"]) for t in detail["trials"]] == [
            (t.number, "Complete", [t.value]) for t in study.trials]
        assert {p["name"] for p in detail["trials"][0]["params"]} == PARAMS


@pytest.mark.slow
def test_confirm_retrains_the_best_configurations_over_seeds(searched, tmp_path):
    sweep_dir, _ = searched
    out = tmp_path / "confirm"
    proc = run_cli("mnist_lit.confirm", str(sweep_dir), "top_k=2", "seeds=2", f"out={out}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = sorted(study_of(sweep_dir).trials, key=lambda t: t.value, reverse=True)[:2]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(f"trial{t.number}" for t in best)
    for trial in best:
        runs = [metrics(out / f"trial{trial.number}" / str(i)) for i in (0, 1)]
        # the test set is looked at now, once per seed, with the trial's own parameters
        assert [m["seed"] for m in runs] == [1, 2] and all(0 <= m["test_acc"] <= 1 for m in runs)
        ran = yaml.safe_load((out / f"trial{trial.number}" / "0" / ".hydra" / "overrides.yaml").read_text())
        assert f"data.batch_size={trial.params['data.batch_size']}" in ran
        assert not any(o.startswith("hparams_search") for o in ran)
    tables = proc.stdout.strip().split("\n\n")
    assert len(tables) == 2 and "test/acc (mean ± std)" in tables[1]
    assert len(tables[1].splitlines()) == 2 + 2 and all("| 2 |" in row for row in tables[1].splitlines()[2:])


@pytest.mark.parametrize("name, pruner", [("median", optuna.pruners.MedianPruner),
                                          ("hyperband", optuna.pruners.HyperbandPruner),
                                          ("none", optuna.pruners.NopPruner)])
def test_pruner_options(name, pruner):
    from conftest import PROJECT
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from mnist_lit.config import schema

    GlobalHydra.instance().clear()
    schema.register()
    with initialize_config_dir(str(PROJECT / "conf"), version_base="1.3"):
        cfg = compose("train", ["hparams_search=optuna", f"hydra/sweeper/pruner={name}"],
                      return_hydra_config=True)
    assert isinstance(instantiate(cfg.hydra.sweeper.pruner), pruner)
    assert cfg.hydra.sweeper._target_.endswith("mnist_lit_optuna.optuna_sweeper.OptunaSweeper")
    assert cfg.test is False and cfg.optimized_metric == "val/acc_best"  # the search never tests


def test_confirm_refuses_a_folder_without_a_search(tmp_path, capsys):
    from mnist_lit.confirm import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "top_k=2"])
    assert exit_info.value.code == 1
    assert "not the folder of an Optuna search" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "top_k=zero"])
    assert "top_k=zero seeds=3: both must be integers >= 1" in capsys.readouterr().err


def test_resume_repeats_only_plain_search_overrides(tmp_path):
    from mnist_lit.cli.resume import expand_resume
    from mnist_lit.errors import UserError
    from mnist_lit.search.study import SWEEPER_TARGET, search_resume

    def folder(hydra_overrides, task_overrides):
        hydra = {"sweeper": {"_target_": SWEEPER_TARGET},
                 "overrides": {"hydra": hydra_overrides, "task": task_overrides}}
        (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
        return tmp_path

    sweep = folder(["hydra.mode=MULTIRUN", "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=4",
                    f"hydra.sweep.dir={tmp_path}/old"], ["hparams_search=optuna", "data.batch_size=64"])
    assert expand_resume(["-m", f"resume={sweep}", "data.batch_size=32"]) == [
        "-m", "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=4", "hparams_search=optuna",
        f"hydra.sweep.dir={sweep}", f"resume={sweep}", "data.batch_size=32"]
    # a folder may come from anyone: no targets, no other Hydra settings, no interpolations
    for hydra_overrides, task_overrides in [(["hydra.sweeper.pruner._target_=os.system"], []),
                                            (["hydra.job_logging.root.level=DEBUG"], []),
                                            (["hydra.sweeper.storage=${oc.env:HOME}"], []),
                                            ([], ["+callbacks.x._target_=runpy.run_path"])]:
        with pytest.raises(UserError, match="refused"):
            search_resume(folder(hydra_overrides, task_overrides), ["-m"])
    with pytest.raises(UserError, match="not a sweep folder"):  # no search there: a grid sweep's resume
        expand_resume(["-m", f"resume={tmp_path / 'elsewhere'}"])


@pytest.mark.slurm
def test_two_parallel_trials_as_slurm_jobs_share_the_study(slurm, synthetic_root, tmp_path):
    # the launcher submits two workers to the local SLURM cluster at once, each a SLURM job that runs trials;
    # each reports its epochs to the study through the journal file in the sweep folder (shared storage)
    proc = search(synthetic_root, tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                  "hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1",
                  "hydra.launcher.timeout_min=10", "trainer.max_epochs=2", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert [(t.state.name, sorted(t.intermediate_values)) for t in trials] == [("COMPLETE", [0, 1])] * 2
    assert len(list((tmp_path / ".submitit").glob("*/*_log.err"))) == 2  # two SLURM jobs ran them
    assert {metrics(tmp_path / str(i))["status"] for i in (0, 1)} == {"completed"}


@pytest.mark.slow
def test_the_same_search_command_again_continues_its_study(synthetic_root, tmp_path):
    first = search(synthetic_root, tmp_path, "hydra.sweeper.n_trials=1", "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    again = search(synthetic_root, tmp_path, "hydra.sweeper.n_trials=2", "trainer.max_epochs=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing the Optuna search of" in again.stderr
    trials = study_of(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[1].params != trials[0].params  # the seeded sampler does not start over
    assert metrics(tmp_path / "0")["status"] == metrics(tmp_path / "1")["status"] == "completed"
