"""Runs that end early keep their work: divergence, SIGTERM, and checkpoint writes that fail half-way."""

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import lightning.pytorch as pl
import pytest
import torch
from conftest import PROJECT, SYNTHETIC_OVERRIDES, run_cli
from test_errors import cli
from test_resume import popen_train
from test_sweeps import hparams_of, session_status

from mnist_lit.errors import UserError
from mnist_lit.runs.reliability import AtomicCheckpointIO


def test_divergence_stops_with_status_and_keeps_the_best_checkpoint(synthetic_root, tmp_path, capfd):
    # lr 1e-3 for epoch 0 (16 steps), then x1e6 from step 20: the loss explodes in epoch 1
    step_up = ("model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,"
               "step_size:20,gamma:1000000.0}")
    code, output = cli(capfd, f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path}",
                       *SYNTHETIC_OVERRIDES,
                       "trainer.max_epochs=3", step_up)
    assert code == 1 and "Traceback" not in output, output
    assert "training diverged" in output and "epoch 1" in output and "model.optimizer.lr=" in output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and "training diverged" in metrics["error"]
    best = metrics["best_checkpoint"]
    assert best and "epoch00" in best and best in output
    weights = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.isfinite(w).all() for w in weights.values())
    # in TensorBoard's HPARAMS table too, with the best score it reached
    _, tags, scalars, _ = hparams_of(tmp_path / "tensorboard")
    assert tags[0] == "val/acc_best" and scalars["val/acc_best"] == pytest.approx(1.0)  # synthetic digits
    assert session_status(tmp_path / "tensorboard") == "STATUS_FAILURE"  # left out of "finished runs" there


def test_huge_learning_rate_diverges_at_once(synthetic_root, tmp_path, capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, output = cli(capfd, f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path}",
                           *SYNTHETIC_OVERRIDES, "trainer.max_epochs=2", "model.optimizer.lr=1e3")
    assert code == 1 and "Traceback" not in output
    assert "training diverged" in output and "epoch 1 reached" in output and "no checkpoint" in output
    # no best score yet, and no warning about asking for one
    assert not [w for w in caught if "MaxMetric was called before" in str(w.message)]
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"
    # TensorBoard takes a sweep's columns from one of its runs: this one lists every column too
    _, tags, scalars, _ = hparams_of(tmp_path / "tensorboard")
    assert tags == ["val/acc_best", "test/acc", "val/acc", "train/acc", "val/loss", "test/loss", "train/loss"]
    assert scalars == {}


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint(synthetic_root, tmp_path):
    marker = tmp_path / "paused"
    proc = popen_train(f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path / 'run'}",
                       *SYNTHETIC_OVERRIDES,
                       "trainer.max_epochs=2",
                       "+callbacks.pause._target_=test_resume.PauseAt", "+callbacks.pause.epoch=0",
                       "+callbacks.pause.batch=1", f"+callbacks.pause.marker={marker}")
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    marker.unlink()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    assert "interrupted by SIGTERM in epoch 1 after 10 optimizer steps" in err  # counted from 1  # 2 training_steps of 5
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["steps"] == 10
    ckpt = torch.load(metrics["resume_checkpoint"], weights_only=True)
    resume = ckpt["callbacks"]["ResumeExactly"]
    assert ckpt["global_step"] == 10 and (resume["epoch"], resume["batches_done"]) == (0, 10)


class SignalAtTrainEnd(pl.Callback):
    """Test helper: SIGTERM to its own process when training has ended (after the last validation)."""

    def on_train_end(self, trainer, pl_module):
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_signal_after_the_last_epoch_keeps_the_training(synthetic_root, tmp_path):
    # a time limit hitting a job between its last epoch and its test, without checkpoint callbacks
    run = tmp_path / "run"
    proc = popen_train(f"data.root={synthetic_root}", f"hydra.run.dir={run}", *SYNTHETIC_OVERRIDES,
                       "trainer.max_epochs=1", "callbacks=none",
                       f"+callbacks.signal._target_={__name__}.SignalAtTrainEnd")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["steps"] == 16
    assert torch.load(metrics["resume_checkpoint"], weights_only=True)["global_step"] == 16


# every command with arguments that keep it busy for a while (a run's data; a folder it then refuses)
COMMANDS = {
    "train": lambda tmp, data: [f"data.root={data}", f"hydra.run.dir={tmp / 'run'}", *SYNTHETIC_OVERRIDES],
    "evaluate": lambda tmp, data: [f"run_dir={tmp}"],
    "predict": lambda tmp, data: [f"run_dir={tmp}"],
    "export": lambda tmp, data: [f"run_dir={tmp}"],
    "summarize": lambda tmp, data: [str(tmp)],
    "confirm": lambda tmp, data: [str(tmp)],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_from_the_first_line_stops_without_a_traceback(command, synthetic_root, tmp_path):
    """Ctrl-C while a command imports torch, Lightning and Hydra, composes its config or starts its work:
    one line, exit 130, at every moment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    # the interpreter's own start-up (site-packages) comes before any line of mnist-lit: the first signal
    # follows it, whatever the machine's load
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
    interpreter = time.monotonic() - started
    signalled = 0
    for delay in (interpreter + 0.05, 0.3, 1.0, 2.0):
        folder = tmp_path / f"{delay:.2f}"
        folder.mkdir()
        args = [sys.executable, "-m", f"mnist_lit.{command}", *COMMANDS[command](folder, synthetic_root)]
        proc = subprocess.Popen(args, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        time.sleep(delay)
        running = proc.poll() is None  # a command that ended first (summarize refuses the folder) is done
        if running:
            proc.send_signal(signal.SIGINT)
            signalled += 1
        _, err = proc.communicate(timeout=120)
        said = f"{delay:.2f} s: {err[-3000:]}"
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, said
        # it had ended meanwhile with its own one-line error: exit 1, or killed by the signal while the
        # interpreter shut down (its handlers are gone by then; nothing more is printed)
        ended = err.strip().splitlines()[-1:] and err.strip().splitlines()[-1].startswith("error:")
        if running and not (ended and proc.returncode in (1, -signal.SIGINT)):
            assert proc.returncode == 130, said
            assert err.strip().splitlines()[-1].startswith("stopped: interrupted (Ctrl-C)"), said
    assert signalled  # every command takes longer than the interpreter's start


@contextlib.contextmanager
def small_disk(tmp_path, size: str):
    """A tmpfs of `size` on tmp_path/disk (the full disk), unmounted after; skips where none can be."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs (the full disk) needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


def fill(disk, leave: int = 0) -> None:
    """Take all of `disk`'s free space but `leave` bytes."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * (free - leave))


@pytest.mark.slow
def test_a_full_disk_keeps_the_earlier_checkpoint_and_the_run_resumes(synthetic_root, tmp_path):
    """The disk fills up during a run: the checkpoint of the epoch before is kept whole, the error is one
    paragraph, and once there is space again `resume=` finishes the run."""
    with small_disk(tmp_path, "8m") as disk:
        run, marker = disk / "run", tmp_path / "paused"
        # val/loss improves every epoch: each epoch writes a new best checkpoint and last.ckpt (1.2 MB each)
        pause = ["+callbacks.pause._target_=test_resume.PauseAt", "+callbacks.pause.epoch=1",
                 "+callbacks.pause.batch=0", f"+callbacks.pause.marker={marker}"]
        proc = popen_train(f"data.root={synthetic_root}", f"hydra.run.dir={run}", *SYNTHETIC_OVERRIDES,
                           "trainer.max_epochs=3", "callbacks.model_checkpoint.monitor=val/loss",
                           "callbacks.model_checkpoint.mode=min", *pause)
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()[1][-3000:]
        # in epoch 2: all but 128 KiB taken, room for metrics.json but not for the epoch's checkpoint
        fill(disk, leave=128 * 1024)
        marker.unlink()
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 1 and err.strip().count("\n") == 0, err[-3000:]
        assert err.startswith("error: could not write checkpoint") and "No space left on device" in err, err
        assert f"python -m mnist_lit.train resume={run}" in err
        kept = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert kept["global_step"] == 16  # the end of epoch 1, whole
        assert not list(run.glob("checkpoints/.*.tmp"))
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "failed" and "No space left on device" in metrics["error"]

        (disk / "filler").unlink()
        # the test's callback is given again (a recorded one naming code is not repeated), never to pause
        resumed = run_cli("mnist_lit.train", f"resume={run}", *pause[:1], "+callbacks.pause.epoch=99",
                          env={"PYTHONPATH": str(PROJECT / "tests")})
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        metrics = json.loads((run / "metrics.json").read_text())
        assert (metrics["status"], metrics["steps"]) == ("completed", 48)


def test_a_full_disk_while_metrics_json_is_written_keeps_the_earlier_file(tmp_path):
    """metrics.json on a real full disk (a 1 MB tmpfs): one paragraph, the file written before intact."""
    from mnist_lit.runs.record import write_json_atomically

    with small_disk(tmp_path, "1m") as disk:
        path = disk / "metrics.json"
        write_json_atomically(path, {"status": "running"})
        fill(disk)
        with pytest.raises(UserError) as caught:
            write_json_atomically(path, {"status": "completed",
                                         "metrics": {f"m{i}": i for i in range(10000)}})
        message = str(caught.value)
        assert "No space left on device" in message and "free some disk space" in message
        assert "\n" not in message
        assert json.loads(path.read_text()) == {"status": "running"}
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "metrics.json"]  # no temporary file


def test_a_failed_checkpoint_write_leaves_no_partial_file(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(3))

    def disk_full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match=r"could not write checkpoint .*last.ckpt: No space left on device"):
        io.save_checkpoint({"weights": torch.zeros(3)}, path)
    # the previous checkpoint is intact under its name, and no temporary file is left behind
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


class InFlight:
    """HostCopy as on a GPU: a copy that is still on its way when it is made (read() would wait for it)."""

    def __init__(self, values):
        self.values, self.done = values.clone(), object()

    def read(self):
        return self.values


@pytest.mark.parametrize("gpu", [False, True])
def test_divergence_checks_judge_without_waiting_for_the_gpu(monkeypatch, gpu):
    from types import SimpleNamespace

    from mnist_lit.runs import reliability

    if gpu:
        monkeypatch.setattr(reliability, "HostCopy", InFlight)
    stop = reliability.StopOnDivergence(every=5)
    losses = {5: 0.5, 10: 1e9, 15: 1e9}
    trainer = SimpleNamespace(global_step=0, current_epoch=2,
                              strategy=SimpleNamespace(reduce_boolean_decision=lambda flag, all: flag))
    module = SimpleNamespace(train_metrics=lambda: {"train/loss": torch.tensor(losses[trainer.global_step])})
    trainer.global_step = 5
    stop.on_train_batch_end(trainer, module, None, None, 0)
    trainer.global_step = 10  # the loss explodes: on a CPU judged at once, on a GPU at the next check
    if not gpu:
        with pytest.raises(reliability.Diverged, match="reached 1e\\+09 by optimizer step 10"):
            stop.on_train_batch_end(trainer, module, None, None, 0)
        return
    stop.on_train_batch_end(trainer, module, None, None, 0)  # judges step 5's reading: fine
    trainer.global_step = 15
    with pytest.raises(reliability.Diverged, match="epoch 3 reached 1e\\+09 by optimizer step 10"):
        stop.on_train_batch_end(trainer, module, None, None, 0)
