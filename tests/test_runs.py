"""Run folders and attempts (mnist_lit/runs/folders.py): no two runs share a folder, sweeps resume, requeued SLURM
jobs continue.

The `slurm` tests need a running SLURM (`sudo bash scripts/slurm_local.sh start`, as .ci/run does); they
are skipped, with the reason, where there is none.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml
from conftest import PROJECT, SYNTHETIC_OVERRIDES, compared, compose, run_cli
from omegaconf import OmegaConf

from mnist_lit.cli.resume import expand_resume
from mnist_lit.errors import RunStopped, UserError
from mnist_lit.runs.folders import prepare_attempt

TESTS = Path(__file__).resolve().parent
ENV = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(PROJECT), str(TESTS)])}
# 16 optimizer steps an epoch, one per training_step, so that there is a middle of an epoch to stop in
RUN = [*SYNTHETIC_OVERRIDES, "steps_per_execution=1", "trainer.max_epochs=2",
       "trainer.deterministic=true",
       "~callbacks.test_images", "~callbacks.sample_digits", "threads=1"]


class PauseJob(pl.Callback):
    """Test helper: each sweep job of `jobs` writes `<folder>/paused<job>` (its SLURM job id inside) at
    (epoch, batch) and waits until the test removes it, so that the test's signal lands at a known step."""

    def __init__(self, jobs: list[int], epoch: int, batch: int, folder: str):
        self.jobs, self.epoch, self.batch, self.folder = list(jobs), epoch, batch, Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from hydra.core.hydra_config import HydraConfig

        job = HydraConfig.get().job.num
        if job not in self.jobs or (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        marker, done = self.folder / f"paused{job}", self.folder / f"done{job}"
        if done.exists():  # once: a resumed epoch counts its batches from 0 again
            return
        tmp = self.folder / f".paused{job}"
        tmp.write_text(f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ.get('SLURM_ARRAY_TASK_ID')}")
        tmp.rename(marker)
        deadline = time.monotonic() + 120
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        done.touch()


def pause(jobs: list[int], epoch: int, batch: int, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return [f"+callbacks.pause._target_={__name__}.PauseJob",
            f"+callbacks.pause.jobs=[{','.join(map(str, jobs))}]", f"+callbacks.pause.epoch={epoch}",
            f"+callbacks.pause.batch={batch}", f"+callbacks.pause.folder={folder}"]


def popen_train(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mnist_lit.train", *args], cwd=PROJECT,
                            env={**os.environ, **ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1][-3000:]
    return marker.read_text()



def one_run_of_checkpoints(job_dir: Path) -> None:
    """The folder holds one run's checkpoints: last.ckpt and the best one, no last-v1.ckpt, no stale best."""
    best = Path(json.loads((job_dir / "metrics.json").read_text())["best_checkpoint"]).name
    assert sorted(p.name for p in (job_dir / "checkpoints").iterdir()) == sorted(["last.ckpt", best])


# ------------------------------------------------------------------------------------------- run folders

@pytest.mark.slow
def test_two_runs_started_in_the_same_second_get_two_folders(synthetic_root, tmp_path):
    # a run folder named to the day: both runs are sure to get the same name, and so to collide
    runs = tmp_path / "runs"
    args = [f"data.root={synthetic_root}", *SYNTHETIC_OVERRIDES, "trainer.max_epochs=1", "callbacks=none",
            "test=false", "threads=1", f"hydra.run.dir={runs}/" + "${now:%Y-%m-%d}"]
    procs = [popen_train(*args, f"seed={seed}") for seed in (1, 2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    folders = sorted(runs.iterdir())
    assert [p.name for p in folders] == [time.strftime("%Y-%m-%d"), time.strftime("%Y-%m-%d") + "_1"]
    seeds = {json.loads((p / "metrics.json").read_text())["seed"] for p in folders}
    assert seeds == {1, 2}  # each folder holds one run, not a mix of the two
    for p in folders:
        assert yaml.safe_load((p / ".hydra" / "config.yaml").read_text())["seed"] == json.loads(
            (p / "metrics.json").read_text())["seed"]


@pytest.mark.slow
def test_a_folder_holding_another_run_is_refused(synthetic_root, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text('{"status": "completed"}\n')
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    proc = run_cli("mnist_lit.train", f"hydra.run.dir={run}", "data.root=nowhere", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"hydra.run.dir={run} already holds another run" in proc.stderr
    assert f"resume={run}" in proc.stderr  # names the way to continue it instead
    assert (run / "metrics.json").read_text() == '{"status": "completed"}\n'  # nothing lost
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "metrics.json"]

    # that run's own resume may write there, and says so (here it then stops at the corrupt checkpoint)
    (run / ".hydra").mkdir()
    recorded = yaml.safe_dump([f"data.root={synthetic_root}", "data.download=false"])
    (run / ".hydra" / "overrides.yaml").write_text(recorded)
    proc = run_cli("mnist_lit.train", f"resume={run}", "seed=7", timeout=120)
    said = f"resume={run}: continuing the run in its own folder from {run}/checkpoints/last.ckpt"
    assert said in proc.stdout
    assert "the run had completed; it trains only up to a new trainer.max_epochs" in proc.stdout
    assert proc.returncode == 1 and "last.ckpt" in proc.stderr and "Traceback" not in proc.stderr
    assert (run / "metrics.json").read_text() == '{"status": "completed"}\n'
    # refused, it leaves the run's recorded config as it was (Hydra had written the command's over it)
    assert (run / ".hydra" / "overrides.yaml").read_text() == recorded
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == ["overrides.yaml"]

    # while another process continues it (here this test's), a second resume is refused before any work
    from mnist_lit.runs.folders import hold

    assert hold(run)
    proc = run_cli("mnist_lit.train", f"resume={run}", timeout=120)
    assert proc.returncode == 1 and f"run {run} is in use" in proc.stderr and "Traceback" not in proc.stderr
    assert "continuing the run" not in proc.stdout

    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sweep" / "multirun.yaml").write_text("{}\n")
    proc = run_cli("mnist_lit.train", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "seed=1,2", timeout=120)
    assert proc.returncode == 1 and "already holds a sweep" in proc.stderr
    assert f"-m resume={tmp_path / 'sweep'}" in proc.stderr
    assert not list((tmp_path / "sweep" / "0").iterdir())


def test_a_run_folder_and_a_sweep_folder_are_each_refused_where_the_other_is_expected(tmp_path):
    """Each command that takes a folder names the command for the kind of folder it was given."""
    sweep, run = tmp_path / "sweep", tmp_path / "run"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {overrides: {hydra: [], task: [seed=1,2]}}\n")
    (sweep / "0" / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (sweep / "0" / "metrics.json").write_text('{"status": "completed"}\n')
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run / "metrics.json").write_text('{"status": "completed"}\n')
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    train = "python -m mnist_lit.train"
    cases = [  # (command line, the problem, the command to use instead)
        (("mnist_lit.train", f"hydra.run.dir={sweep}", "data.root=nowhere"),
         f"hydra.run.dir={sweep} already holds a sweep", f"{train} -m resume={sweep}"),
        (("mnist_lit.train", "-m", f"hydra.sweep.dir={run}", "data.root=nowhere", "seed=1,2"),
         f"hydra.sweep.dir={run} already holds a run", f"{train} resume={run}"),
        (("mnist_lit.train", f"resume={sweep}"), "is a sweep's folder", f"{train} -m resume={sweep}"),
        (("mnist_lit.train", "-m", f"resume={run}"), "a single run's", f"{train} resume={run},"),
        (("mnist_lit.evaluate", f"run_dir={sweep}"), f"run_dir={sweep / '0'}",
         f"python -m mnist_lit.summarize {sweep}"),
        (("mnist_lit.summarize", str(run)), "a single run's folder",
         f"python -m mnist_lit.evaluate run_dir={run}"),
    ]
    for args, problem, fix in cases:
        proc = run_cli(*args, timeout=120)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, (args, proc.stderr[-3000:])
        assert proc.stderr.startswith("error: ") and problem in proc.stderr, proc.stderr
        assert fix in proc.stderr, proc.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_a_sweep_folder_taken_in_the_same_second_is_claimed_anew(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mnist_lit.config import schema
    from mnist_lit.runs.folders import ClaimRunDir

    GlobalHydra.instance().clear()
    schema.register()
    with initialize_config_dir(str(PROJECT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", [f"hydra.sweep.dir={tmp_path}/" + "${now:%Y-%m-%d}"],
                            return_hydra_config=True)
    taken = tmp_path / time.strftime("%Y-%m-%d")
    taken.mkdir()  # another sweep started in the same second
    ClaimRunDir().on_multirun_start(cfg)
    assert cfg.hydra.sweep.dir == f"{taken}_1" and (tmp_path / f"{taken.name}_1").is_dir()
    # the jobs' configs are composed again from the hydra overrides: they must name the claimed folder too
    assert cfg.hydra.overrides.hydra[-1] == f"hydra.sweep.dir={taken}_1"


# -------------------------------------------------------------------------------------------- attempts

def job_cfg():
    return compose("train", "data.root=x")


def test_an_earlier_attempt_decides_what_the_job_does(tmp_path):
    # completed: left alone, its metrics returned
    done = tmp_path / "done"
    (done / "checkpoints").mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({"status": "completed", "metrics": {"val/acc_best": 0.9}}))
    cfg = job_cfg()
    assert prepare_attempt(cfg, done, "job 0")["metrics"] == {"val/acc_best": 0.9}
    assert cfg.ckpt_path is None

    # interrupted, or killed without a metrics.json: continued from last.ckpt
    interrupted = {"status": "interrupted", "epochs": 1, "steps": 22}
    for name, metrics in (("interrupted", interrupted), ("killed", None)):
        folder = tmp_path / name
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
        if metrics:
            (folder / "metrics.json").write_text(json.dumps(metrics))
        cfg = job_cfg()
        assert prepare_attempt(cfg, folder, "job 1") is None
        assert cfg.ckpt_path == str(folder / "checkpoints" / "last.ckpt")
        assert (folder / "checkpoints" / "last.ckpt").is_file()

    # failed, or interrupted before any checkpoint: started clean, the earlier files kept aside
    failed = tmp_path / "failed"
    (failed / "checkpoints").mkdir(parents=True)
    (failed / ".hydra").mkdir()
    (failed / "checkpoints" / "epoch00-val_acc0.5000.ckpt").write_bytes(b"x")
    (failed / "metrics.json").write_text(json.dumps({"status": "failed", "error": "disk full"}))
    (failed / "train.log").write_text("first attempt\n")
    cfg = job_cfg()
    assert prepare_attempt(cfg, failed, "job 2") is None and cfg.ckpt_path is None
    assert sorted(p.name for p in failed.iterdir()) == [".hydra", "previous_attempts", "train.log"]
    kept = failed / "previous_attempts" / "0"
    assert (kept / "checkpoints" / "epoch00-val_acc0.5000.ckpt").is_file()
    assert json.loads((kept / "metrics.json").read_text())["error"] == "disk full"

    # diverged: it would diverge again, so it is not run, and is reported as failed once more
    diverged = tmp_path / "diverged"
    diverged.mkdir()
    (diverged / "metrics.json").write_text(json.dumps({"status": "diverged", "error": "loss NaN"}))
    with pytest.raises(RunStopped, match="job 3 diverged in an earlier attempt"):
        prepare_attempt(job_cfg(), diverged, "job 3")


def test_sweep_resume_expands_to_the_sweeps_own_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {
        "hydra": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=old"],
        "task": ["seed=1,2,3", "data.root=/data", "resume=older"]}}}), sweep / "multirun.yaml")
    args = expand_resume(["-m", f"resume={sweep}", "hydra/launcher=basic"])
    assert args == ["-m", "hydra.launcher.n_jobs=2", "seed=1,2,3", "data.root=/data",
                    f"hydra.sweep.dir='{sweep}'", f"resume='{sweep}'", "hydra/launcher=basic"]
    with pytest.raises(UserError, match="takes only hydra options .* not seed=4"):
        expand_resume(["-m", f"resume={sweep}", "seed=4"])
    # a sweep folder may come from anyone: what its recorded overrides would run is refused, unless given
    # again on the command line; of Hydra's options only the launcher and its resources are repeated
    cases = ((["hydra.launcher.setup=[touch,x]"], []), ([], ["+callbacks.x._target_=os.system"]),
             ([], ["model.net.hidden_sizes=[8],[16]", "+model.net._target_=os.system,os.popen"]))
    for recorded, refused in cases:
        overrides = {"hydra": recorded, "task": ["seed=1", *refused]}
        OmegaConf.save(OmegaConf.create({"hydra": {"overrides": overrides}}), sweep / "multirun.yaml")
        with pytest.raises(UserError, match=r"multirun.yaml: .*refused"):
            expand_resume(["-m", f"resume={sweep}"])
    assert "+model.net._target_=os.system,os.popen" in expand_resume(
        ["-m", f"resume={sweep}", "+model.net._target_=os.system,os.popen"])
    with pytest.raises(UserError, match="not a sweep folder"):
        expand_resume(["-m", f"resume={tmp_path}"])


@pytest.mark.slow
def test_interrupted_sweep_resumes_its_unfinished_jobs(synthetic_root, tmp_path):
    sweep_dir, pauses = tmp_path / "sweep", tmp_path / "pauses"
    data = f"data.root={synthetic_root}"
    # job 1 uninterrupted, beside the sweep: what the sweep's job 1 must end with
    reference = popen_train(data, *RUN, "seed=1", f"hydra.run.dir={tmp_path / 'ref'}")
    # the second job of three is stopped (Ctrl-C to the sweep) in the middle of its first epoch
    proc = popen_train("-m", data, *RUN, "seed=0,1,2", f"hydra.sweep.dir={sweep_dir}",
                       *pause([1], 0, 5, pauses))
    wait_for(pauses / "paused1", proc)
    proc.send_signal(signal.SIGINT)
    (pauses / "paused1").unlink()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert json.loads((sweep_dir / "0" / "metrics.json").read_text())["status"] == "completed"
    stopped = json.loads((sweep_dir / "1" / "metrics.json").read_text())
    assert (stopped["status"], stopped["steps"]) == ("interrupted", 6)
    assert f"python -m mnist_lit.train -m resume={sweep_dir}" in err  # the sweep goes on, not the job alone
    assert not (sweep_dir / "2").exists()  # never started
    first = (sweep_dir / "0" / "metrics.json").stat().st_mtime_ns

    # resumed on another launcher: the two unfinished jobs side by side in joblib's worker processes
    # (the pause callback is given again: a recorded override naming code is repeated only when the user does)
    resumed = run_cli("mnist_lit.train", "-m", f"resume={sweep_dir}", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2", *pause([1], 0, 5, pauses), env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "job 0 completed in an earlier attempt: left alone" in (sweep_dir / "0" / "train.log").read_text()
    last = sweep_dir / "1" / "checkpoints" / "last.ckpt"
    assert f"job 1: continuing its earlier attempt from {last} (epoch 0, step 6)" in (
        sweep_dir / "1" / "train.log").read_text()
    assert (sweep_dir / "0" / "metrics.json").stat().st_mtime_ns == first
    for job in (0, 1, 2):
        assert json.loads((sweep_dir / str(job) / "metrics.json").read_text())["status"] == "completed"
        assert yaml.safe_load((sweep_dir / str(job) / ".hydra" / "config.yaml").read_text())["seed"] == job
    one_run_of_checkpoints(sweep_dir / "1")
    assert not list(sweep_dir.glob("*/curves.png"))  # sweep jobs leave the figures to TensorBoard

    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    assert compared(sweep_dir / "1") == compared(tmp_path / "ref")  # as if it had never been stopped
    assert compared(sweep_dir / "1")["steps"] == 2 * 16


# ----------------------------------------------------------------------------------------------- SLURM

@pytest.fixture(scope="session")
def slurm():
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed here: sudo bash scripts/slurm_local.sh start installs, starts it")
    if subprocess.run(["scontrol", "ping"], capture_output=True, text=True).returncode != 0:
        pytest.skip("SLURM is not running here: sudo bash scripts/slurm_local.sh start")


def slurm_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "")


def stop_slurm_job(how: list[str], job_id: str, err_log: Path, marker: Path) -> None:
    """Signal a paused SLURM job; let it go on once the signal has reached it, so it stops at this step."""
    subprocess.run(how, check=True)
    deadline = time.monotonic() + 60
    while " received: stopping" not in err_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    marker.unlink()


def release(job_id: str) -> None:
    """A requeued job is held for 120 s by SLURM (a fixed delay): let it start as soon as it is pending."""
    deadline = time.monotonic() + 60
    while slurm_state(job_id) != "PENDING" and time.monotonic() < deadline:
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)


@pytest.mark.slurm
def test_slurm_jobs_requeued_or_timed_out_mid_epoch_continue_where_they_stopped(slurm, synthetic_root,
                                                                                 tmp_path):
    sweep_dir, pauses = tmp_path / "sweep", tmp_path / "pauses"
    # three identical jobs on the SLURM cluster, in the middle of their second epoch: job 0 gets submitit's
    # time-limit/preemption signal (SIGUSR2, then submitit requeues it), job 1 is requeued by SLURM
    # (scontrol requeue: SIGTERM), job 2 runs through
    proc = popen_train("-m", f"data.root={synthetic_root}", *RUN, "seed=0,0,0",
                       f"hydra.sweep.dir={sweep_dir}",
                       "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10",
                       "hydra.launcher.cpus_per_task=1", "hydra.launcher.max_num_timeout=3",
                       *pause([0, 1], 1, 5, pauses))
    ids = {job: wait_for(pauses / f"paused{job}", proc) for job in (0, 1)}
    logs = {job: sweep_dir / ".submitit" / ids[job] / f"{ids[job]}_0_log.err" for job in (0, 1)}
    stop_slurm_job(["scancel", "--signal=USR2", ids[0]], ids[0], logs[0], pauses / "paused0")
    stop_slurm_job(["scontrol", "requeue", ids[1]], ids[1], logs[1], pauses / "paused1")
    for job in (0, 1):
        release(ids[job])
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]

    assert "SIGUSR2 received" in logs[0].read_text() and "SIGTERM received" in logs[1].read_text()
    assert "this job is timed-out" in logs[0].read_text()  # submitit's view: near its 10 minutes' end
    uninterrupted = compared(sweep_dir / "2")
    assert uninterrupted["steps"] == 2 * 16 and uninterrupted["status"] == "completed"
    for job in (0, 1):
        job_dir = sweep_dir / str(job)
        log = (job_dir / "train.log").read_text()
        last = job_dir / "checkpoints" / "last.ckpt"
        assert f"job {job}: continuing its earlier attempt from {last} (epoch 1, step 22)" in log
        assert "Restoring states from the checkpoint" in log and "auto-requeue" not in log
        assert compared(job_dir) == uninterrupted  # as if it had never been stopped
        one_run_of_checkpoints(job_dir)

    summary = run_cli("mnist_lit.summarize", str(sweep_dir), timeout=120)
    assert summary.returncode == 0 and "3 completed" in summary.stderr, summary.stderr[-3000:]


def test_a_run_interrupted_before_its_first_checkpoint_starts_again_in_its_folder(synthetic_root, tmp_path):
    (tmp_path / "metrics.json").write_text('{"status": "interrupted", "resume_checkpoint": null}\n')
    proc = run_cli("mnist_lit.train", f"data.root={synthetic_root}", *SYNTHETIC_OVERRIDES,
                   "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"


def test_a_copied_run_resumes_from_its_own_checkpoints(synthetic_root, tmp_path):
    """A checkpoint records its best checkpoint's absolute path: a run copied (and its original moved away)
    tests the best checkpoint in its own folder, and keeps its completed record."""
    run = tmp_path / "run"
    proc = run_cli("mnist_lit.train", f"data.root={synthetic_root}", *SYNTHETIC_OVERRIDES,
                   "trainer.max_epochs=1", f"hydra.run.dir={run}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = json.loads((run / "metrics.json").read_text())
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    run.rename(tmp_path / "moved")
    proc = run_cli("mnist_lit.train", f"resume={copy}", timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    after = json.loads((copy / "metrics.json").read_text())
    assert after["status"] == "completed" and after["test_acc"] == before["test_acc"]
    assert after["best_checkpoint"] == str(copy / "checkpoints" / Path(before["best_checkpoint"]).name)


def test_a_cluster_that_refuses_the_jobs_is_named_in_one_paragraph():
    from submitit.core.utils import FailedJobError

    from mnist_lit.runs.folders import sweep_end_message

    refused = FailedJobError("sbatch: error: Batch job submission failed: Unable to contact slurm controller")
    assert sweep_end_message(refused) == (
        "the cluster did not take the sweep's jobs (sbatch: error: Batch job submission failed: Unable to "
        "contact slurm controller). Check that SLURM answers here (sinfo), or run the sweep on this machine: "
        "hydra/launcher=joblib.")
    assert sweep_end_message(ValueError("anything else")) is None


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_and_each_job_keeps_a_resumable_checkpoint(tmp_path, synthetic_root):
    # Ctrl-C in a terminal reaches the whole process group: the sweep's process and its joblib workers
    sweep, log = tmp_path / "sweep", tmp_path / "output.txt"
    with log.open("w") as output:  # a file, not a pipe: the workers may write on after the sweep's process ends
        proc = subprocess.Popen(
            [sys.executable, "-m", "mnist_lit.train", "-m", "hydra/launcher=joblib", f"hydra.sweep.dir={sweep}",
             "seed=1,2", f"data.root={synthetic_root}", *SYNTHETIC_OVERRIDES, "trainer.max_epochs=100000"],
            cwd=PROJECT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not all((sweep / job / "checkpoints" / "last.ckpt").is_file() for job in "01"):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    deadline = time.monotonic() + 120  # the jobs end on their own, after their checkpoints
    while not all((sweep / job / "metrics.json").is_file() for job in "01") and time.monotonic() < deadline:
        time.sleep(0.5)
    text = log.read_text()
    assert "Traceback" not in text
    assert f"Continue the sweep with: python -m mnist_lit.train -m resume={sweep}" in text
    for job in "01":
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "interrupted" and Path(metrics["resume_checkpoint"]).is_file(), metrics
