"""Many workers and processes on one Optuna study, with real processes on synthetic data: asynchronous
workers, two sweeper processes on one study (one of them killed with kill -9), a SLURM worker job requeued
mid-trial, Ctrl-C, the storages, and a search of two objectives."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from conftest import PROJECT, run_cli
from test_optuna import SHORT, search, study_of
from test_runs import pause, popen_train, release, slurm, stop_slurm_job, wait_for  # noqa: F401 (slurm)
from test_sweeps import metrics

from mnist_lit.search.study import default_storage, storage


def start(root, sweep_dir, *overrides, log):
    """A search command started in its own process group (as from a terminal), its output into `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_lit.train", "-m", f"data.root={root}", *SHORT, *overrides,
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def running(sweep_dir, worker_pid: int) -> list:
    """The RUNNING trials of the worker in process `worker_pid` (none before the study exists)."""
    if not any((sweep_dir / name).is_file() for name in ("optuna.journal", "optuna.db")):
        return []
    trials = study_of(sweep_dir).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{worker_pid}")]


def wait_until(condition, procs, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert all(p.poll() is None for p in procs), f"a search ended before {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_two_processes_share_a_study_and_a_killed_ones_trial_runs_again(synthetic_root, tmp_path):
    sweep_dir = tmp_path / "search"
    same = ["hydra.sweeper.n_trials=5", "trainer.max_epochs=4", "hydra/sweeper/pruner=none",
            "hydra.sweeper.heartbeat_interval=1"]
    with (tmp_path / "a.txt").open("w") as log_a, (tmp_path / "b.txt").open("w") as log_b:
        a = start(synthetic_root, sweep_dir, *same, log=log_a)
        wait_until(lambda: running(sweep_dir, a.pid), [a], "the first process's first trial")
        b = start(synthetic_root, sweep_dir, *same, log=log_b)  # the same command, a second terminal
        wait_until(lambda: running(sweep_dir, b.pid), [a, b], "the second process's first trial")
        wait_until(lambda: running(sweep_dir, a.pid), [a, b], "a trial of the first process")
        killed = running(sweep_dir, a.pid)[0]
        os.killpg(a.pid, signal.SIGKILL)
        assert a.wait(timeout=60) == -signal.SIGKILL
        assert b.wait(timeout=300) == 0, (tmp_path / "b.txt").read_text()[-3000:]
    out_a, out_b = (tmp_path / "a.txt").read_text(), (tmp_path / "b.txt").read_text()
    assert "Traceback" not in out_b and "is in use" not in out_b
    trials = study_of(sweep_dir).trials
    by_b = [t for t in trials if t.user_attrs["worker"].endswith(f":{b.pid}")]
    # the killed trial: failed by the survivor once its heartbeat stopped, its parameters run again by it
    assert trials[killed.number].state == optuna.trial.TrialState.FAIL
    assert f"trial {killed.number}: no heartbeat for" in out_b
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retries) == 1 and retries[0] in by_b
    assert retries[0].params == killed.params and retries[0].state == optuna.trial.TrialState.COMPLETE
    # no trial of the survivor failed; every other trial completed, and 5 count
    assert {t.state for t in by_b} == {optuna.trial.TrialState.COMPLETE}
    done = [t for t in trials if t.number != killed.number]
    assert len(done) == 5 and {t.state for t in done} == {optuna.trial.TrialState.COMPLETE}
    # no trial ran twice: each was started once, by one process, in a job folder of its own
    for t in done:
        assert (out_a + out_b).count(f"trial {t.number}: ") == 1
        assert metrics(sweep_dir / str(t.number))["best_val_acc"] == pytest.approx(t.value)
        assert not (sweep_dir / str(t.number) / "previous_attempts").exists()
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 5}


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_requeued_slurm_workers_trial_runs_again_and_its_job_rejoins(synthetic_root, tmp_path):
    sweep_dir, pauses = tmp_path / "search", tmp_path / "pauses"
    # two worker jobs on the SLURM cluster, each paused in the first epoch of its first trial (16 batches
    # an epoch); the one running trial 0 is requeued there (scontrol requeue: SIGTERM, then SLURM starts it
    # again: its worker function runs anew)
    proc = popen_train("-m", f"data.root={synthetic_root}", *SHORT, "hydra.sweeper.n_trials=4",
                       "hydra.sweeper.n_jobs=2", "hydra/sweeper/pruner=none", "trainer.max_epochs=3",
                       "data.batch_size=32", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10",
                       "hydra.launcher.cpus_per_task=1", *pause([0, 1], 0, 5, pauses),
                       f"hydra.sweep.dir={sweep_dir}")
    job = wait_for(pauses / "paused0", proc)
    live = wait_for(pauses / "paused1", proc)
    logs = {j: sweep_dir / ".submitit" / j / f"{j}_0_log" for j in (job, live)}
    stop_slurm_job(["scontrol", "requeue", job], job, logs[job].with_suffix(".err"), pauses / "paused0")
    release(job)

    def retry_running():  # taken by the requeued job once it started again: the other worker is paused
        return any(t.user_attrs.get("retry_of") == 0 and t.user_attrs.get("worker")
                   for t in study_of(sweep_dir).get_trials(states=(optuna.trial.TrialState.RUNNING,)))

    wait_until(retry_running, [proc], "the requeued job to take trial 0's parameters")
    (pauses / "paused1").unlink()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]

    said = {j: path.with_suffix(".out").read_text() + path.with_suffix(".err").read_text()
            for j, path in logs.items()}
    assert "SIGTERM received: stopping" in said[job] and "Traceback" not in said[job] + said[live]
    # its second start ran to the end (the first one exited, leaving no result, when SLURM requeued it)
    assert said[job].count("Starting with JobEnvironment") == 2 and "Job completed successfully" in said[job]
    trials = study_of(sweep_dir).trials
    interrupted = trials[0]
    # the requeued worker failed its own trial and enqueued its parameters at once (no heartbeat went stale)
    assert interrupted.state == optuna.trial.TrialState.FAIL and interrupted.user_attrs["interrupted"]
    assert "trial 0 interrupted: marked failed" in said[job] and "no heartbeat" not in said[job] + said[live]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retries) == 1 and retries[0].params == interrupted.params
    assert retries[0].state == optuna.trial.TrialState.COMPLETE
    retry = retries[0]
    # the job's second start rejoined the search as a worker and ran trial 0's parameters
    assert retry.user_attrs["worker"] != interrupted.user_attrs["worker"]
    assert f"trial {retry.number}: " in said[job] and f"trial {retry.number}: " not in said[live]
    # no trial of the live worker failed (its trial 1 ran through the requeue); of two workers asking for
    # the last trial at the same moment, the one too many is told failed, unused
    by_live = [t for t in trials if t.user_attrs["worker"] == trials[1].user_attrs["worker"]]
    assert {t.state for t in by_live} == {optuna.trial.TrialState.COMPLETE}
    done = [t for t in trials if t.number != 0 and not t.user_attrs.get("unused")]
    assert len(done) == 4 and {t.state for t in done} == {optuna.trial.TrialState.COMPLETE}
    # no parameters completed twice, no trial ran twice, each in a job folder of its own
    assert len({tuple(sorted(t.params.items())) for t in done}) == 4
    for t in done:
        assert (said[job] + said[live]).count(f"trial {t.number}: ") == 1
        assert metrics(sweep_dir / str(t.number))["best_val_acc"] == pytest.approx(t.value)
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 4}


@pytest.mark.slow
def test_workers_take_trials_without_waiting_for_each_other(synthetic_root, tmp_path):
    # 2 joblib workers, each taking its next trial when its last one ended
    proc = search(synthetic_root, tmp_path, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                  "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.max_epochs=1",
                  "hydra/sweeper/pruner=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # two processes, each its imports once
    for worker in workers:
        own = sorted((t for t in trials if t.user_attrs["worker"] == worker), key=lambda t: t.datetime_start)
        for earlier, later in zip(own, own[1:], strict=False):
            assert later.datetime_start >= earlier.datetime_complete  # one trial at a time per worker
    # worker folders hold their logs, not runs: summarize lists the 4 trials only
    assert sorted(p.name for p in (tmp_path / "workers").iterdir()) == ["0", "1"]
    summary = run_cli("mnist_lit.summarize", str(tmp_path), "--csv")
    rows = summary.stdout.split("\n\n")[0].splitlines()[1:]
    assert summary.returncode == 0, summary.stderr
    assert [row.split(",")[0] for row in rows] == ["0", "1", "2", "3"], summary.stdout


def test_one_function_decides_the_default_storage(tmp_path):
    assert default_storage(tmp_path) == str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="s", storage=storage(default_storage(tmp_path)))
    assert isinstance(study._storage, optuna.storages.JournalStorage)
    assert (tmp_path / "optuna.journal").is_file()
    older = tmp_path / "older"
    older.mkdir()
    optuna.create_study(study_name="s", storage=f"sqlite:///{older / 'optuna.db'}")
    assert default_storage(older) == f"sqlite:///{older / 'optuna.db'}"  # an older search keeps its SQLite
    assert isinstance(storage(f"sqlite:///{tmp_path / 'x.db'}"), optuna.storages.RDBStorage)


def test_seeded_sampler_gives_every_trial_its_own_draws():
    from optuna.distributions import FloatDistribution

    from mnist_lit.search.worker import seeded_per_trial

    space = {"x": FloatDistribution(0, 1)}

    def draws(n: int) -> list[float]:
        study = optuna.create_study(sampler=seeded_per_trial(lambda s: optuna.samplers.RandomSampler(s), 7))
        return [study.ask(space).params["x"] for _ in range(n)]

    # two workers with the same seed do not propose the same parameters; one worker proposes them again
    assert len(set(draws(4))) == 4 and draws(4) == draws(4)


def test_a_dead_workers_trial_is_failed_once_and_enqueued_once(tmp_path):
    from optuna.distributions import FloatDistribution

    from mnist_lit.search.worker import HEARTBEAT, RETRY_OF, fail_and_retry

    study = optuna.create_study(storage=storage(str(tmp_path / "optuna.journal")))
    trial = study.ask({"x": FloatDistribution(0, 1)})
    trial.set_user_attr(HEARTBEAT, time.time() - 100)
    frozen = study.trials[0]
    # two workers saw it stale at the same moment: the second's state change is refused
    other = optuna.load_study(study_name=study.study_name, storage=storage(str(tmp_path / "optuna.journal")))
    assert fail_and_retry(study, frozen) and not fail_and_retry(other, frozen)
    trials = study.trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].user_attrs == {RETRY_OF: 0} and trials[1].system_attrs["fixed_params"] == trial.params


@pytest.mark.slow
def test_a_search_of_two_objectives_writes_its_pareto_front(synthetic_root, tmp_path):
    proc = search(synthetic_root, tmp_path, "hydra.sweeper.n_trials=3", "trainer.max_epochs=2",
                  "hydra.sweeper.direction=[maximize,minimize]",
                  "optimized_metric=[val/acc_best,model/params]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "pruning off: Optuna prunes no search of several objectives (2 here)" in output
    study = study_of(tmp_path)
    assert study.metric_names == ["val/acc_best", "model/params"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for trial in study.trials:
        m = metrics(tmp_path / str(trial.number))["metrics"]
        assert trial.values == [pytest.approx(m["val/acc_best"]), m["model/params"]]
        assert trial.intermediate_values == {}  # not reported: Optuna prunes no such search
    front = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())["pareto_front"]
    assert front == [{"number": t.number, "values": t.values, "params": t.params}
                     for t in sorted(study.best_trials, key=lambda t: t.number)]
    assert "Pareto front (" in output and f"trial {front[0]['number']}: val/acc_best=" in output


def test_directions_and_metrics_must_match(synthetic_root, tmp_path):
    proc = search(synthetic_root, tmp_path, "hydra.sweeper.direction=[maximize,minimize]")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "give one direction (maximize or minimize) per metric" in proc.stderr
    assert not (tmp_path / "0").exists()


@pytest.mark.slow
def test_ctrl_c_enqueues_the_running_trials_and_resume_runs_them_first(synthetic_root, tmp_path):
    sweep_dir = tmp_path / "search"
    with (tmp_path / "out.txt").open("w") as log:
        proc = start(synthetic_root, sweep_dir, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.max_epochs=100000",
                     "hydra/sweeper/pruner=none", log=log)
        def both_training():  # each worker's trial has reported an epoch
            trials = study_of(sweep_dir).trials if (sweep_dir / "optuna.journal").is_file() else []
            return len(trials) == 2 and all(t.intermediate_values for t in trials)

        wait_until(both_training, [proc], "both workers' trials to train")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the sweeper's process and its workers
        assert proc.wait(timeout=120) == 130
    deadline = time.monotonic() + 120  # the workers end on their own, after their trials' checkpoints
    while len(study_of(sweep_dir).trials) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    trials = study_of(sweep_dir).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert all(t.user_attrs.get("interrupted") for t in trials[:2])
    assert {t.user_attrs["retry_of"]: t.system_attrs["fixed_params"] for t in trials[2:]} == {
        0: trials[0].params, 1: trials[1].params}
    assert "Traceback" not in (tmp_path / "out.txt").read_text()
    # resume: the interrupted trials' parameters first, no wait for a heartbeat
    proc = run_cli("mnist_lit.train", "-m", f"resume={sweep_dir}", "hydra.sweeper.n_trials=2",
                   "trainer.max_epochs=1", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(sweep_dir).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert "no heartbeat" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_workers_on_a_database_storage(synthetic_root, tmp_path):
    # any Optuna database URL goes to RDBStorage (postgresql:// too): here SQLite, outside the sweep folder
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    proc = search(synthetic_root, tmp_path / "search", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                  "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.max_epochs=1",
                  f"hydra.sweeper.storage={url}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Watch it with: optuna-dashboard {url}" in proc.stdout + proc.stderr
    trials = optuna.load_study(study_name="mnist_lit", storage=url).trials
    assert [t.state.name for t in trials].count("COMPLETE") == 3
    # two workers that asked at the same moment for the last trial: the one too many is told failed, unused
    assert all(t.user_attrs.get("unused") for t in trials if t.state.name != "COMPLETE")
    assert not (tmp_path / "search" / "optuna.journal").exists()
    results = yaml.safe_load((tmp_path / "search" / "optimization_results.yaml").read_text())
    assert results["storage"] == url and results["trials"] == {"complete": 3}


@pytest.mark.slow
def test_max_failure_rate_stops_every_worker(synthetic_root, tmp_path):
    proc = search(synthetic_root, tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.max_failure_rate=0",
                  "trainer.max_epochs=1", "model.net.dropout=interval(1.5, 2.0)")  # every trial fails
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: 1 of the 1 trials of worker " in proc.stderr
    assert "(more than hydra.sweeper.max_failure_rate=0.0); see python -m mnist_lit.summarize" in proc.stderr
    assert [t.state.name for t in study_of(tmp_path).trials] == ["FAIL"]
