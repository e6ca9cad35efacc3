"""An Optuna search whose study lives in a real PostgreSQL server (hydra.sweeper.storage=postgresql+psycopg://...),
its trials run by parallel workers, continued with -m resume=; and a server it cannot reach, named in one
paragraph."""

import optuna
import pytest
import yaml
from conftest import SYNTHETIC_OVERRIDES, run_cli
from test_sweeps import metrics

SHORT = [*SYNTHETIC_OVERRIDES, "callbacks=none", "threads=1", "hparams_search=optuna", "trainer.max_epochs=2"]


def search(root, sweep_dir, url, *overrides):
    return run_cli("mnist_lit.train", "-m", f"data.root={root}", *SHORT, f"hydra.sweeper.storage={url}",
                   f"hydra.sweep.dir={sweep_dir}", *overrides, timeout=400)


def check_trials(url, sweep_dir, n: int) -> dict[int, float]:
    """The study in PostgreSQL has n completed trials; trial k's value and curve are those of job folder k."""
    study = optuna.load_study(study_name="mnist_lit", storage=url)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.number for t in trials] == list(range(n))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for trial in trials:
        m = metrics(sweep_dir / str(trial.number))
        assert m["status"] == "completed" and m["epochs"] == 2 and m["test_acc"] is None
        assert trial.value == pytest.approx(m["best_val_acc"])
        assert sorted(trial.intermediate_values) == [0, 1]  # each epoch's val/acc, reported by the job
        assert max(trial.intermediate_values.values()) == pytest.approx(m["best_val_acc"])
    return {t.number: t.value for t in trials}


@pytest.mark.slow
def test_a_search_in_postgresql_with_parallel_workers_resumes(synthetic_root, postgres_url, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = search(synthetic_root, sweep_dir, postgres_url, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                  "hydra/launcher=joblib")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    values = check_trials(postgres_url, sweep_dir, 4)
    assert not (sweep_dir / "optuna.db").exists()  # the study is in the server, not in a file of the folder
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 4} and results["best_value"] == pytest.approx(max(values.values()))

    # resume= finds the server in the sweep's record and adds trials 4 and 5 to the same study
    proc = run_cli("mnist_lit.train", "-m", f"resume={sweep_dir}", "hydra.sweeper.n_trials=6", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = check_trials(postgres_url, sweep_dir, 6)
    assert {k: resumed[k] for k in values} == values  # the first four are kept, not run again
    assert not (sweep_dir / "6").exists()
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 6}


@pytest.mark.parametrize("fault", ["no server on the port", "wrong password", "no such database"])
def test_an_unreachable_postgresql_is_one_paragraph(synthetic_root, postgres_server, postgres_url, tmp_path,
                                                    fault):
    url = {
        "no server on the port": postgres_url.replace(f":{postgres_server}/", ":1/"),
        "wrong password": postgres_url.replace(":mnist_lit_test@", ":wrong@"),
        "no such database": postgres_url.rsplit("/", 1)[0] + "/mnist_lit_no_such_database",
    }[fault]
    proc = search(synthetic_root, tmp_path / "sweep", url, "hydra.sweeper.n_trials=1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "sqlalche.me" not in proc.stderr
    said = {
        "no server on the port": "Connection refused",
        "wrong password": "password authentication failed",
        "no such database": 'database "mnist_lit_no_such_database" does not exist',
    }[fault]
    errors = [line for line in proc.stderr.splitlines() if said in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    # one paragraph: the storage named, what the server said, and what to give instead
    assert "hydra.sweeper.storage=" in errors[0] and "reachable Optuna storage" in errors[0]
    assert not (tmp_path / "sweep" / "0").exists()  # no trial ran
