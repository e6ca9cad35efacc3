"""Interrupting real training runs: SIGINT mid-epoch, then resuming, ends exactly as an uninterrupted run.

Also the determinism check: two uninterrupted runs with trainer.deterministic=true are bit-identical.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import PROJECT, compared, run_cli

TESTS = Path(__file__).resolve().parent
# 16 optimizer steps an epoch, grouped 2 by 2 with fast=true, so there is a middle to interrupt; the last
# epoch is interrupted, so its train/loss and train/acc add up sums from before and after
OVERRIDES = ["data.val_size=100", "data.download=false", "steps_per_execution=2", "trainer=cpu",
             "trainer.max_epochs=3", "seed=0", "trainer.deterministic=true"]


class PauseAt(pl.Callback):
    """Test helper: at (epoch, batch_idx) writes `marker` and waits until the test removes it.

    The test sends its signal while the run waits here, so the interruption lands at a known training_step.
    """

    steps_in_groups = True  # with fast=true a batch is a group of steps: it pauses after a whole group

    def __init__(self, epoch: int, batch: int, marker: str):
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            self.marker.write_text("paused")
            deadline = time.monotonic() + 120
            while self.marker.exists() and time.monotonic() < deadline:
                time.sleep(0.01)


def popen_train(*overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(TESTS)}
    return subprocess.Popen([sys.executable, "-m", "mnist_lit.train", *overrides], cwd=PROJECT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)



@pytest.mark.slow
@pytest.mark.parametrize("fast", ["true", "false"])
def test_sigint_mid_epoch_then_resume_matches_uninterrupted_run(synthetic_root, tmp_path, fast):
    data = f"data.root={synthetic_root}"
    overrides = [*OVERRIDES, f"fast={fast}"]
    # two uninterrupted runs in one process (a two-job sweep), while the interrupted one runs beside them
    sweep = popen_train("-m", "seed=0,0", data, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                        *[o for o in overrides if not o.startswith("seed=")])
    run, marker = tmp_path / "run", tmp_path / "paused"
    # after 6 steps of the last epoch: Lightning's batch 5, or the grouped path's third group of 2
    pause = [f"+callbacks.pause._target_={__name__}.PauseAt", "+callbacks.pause.epoch=2",
             f"+callbacks.pause.batch={2 if fast == 'true' else 5}", f"+callbacks.pause.marker={marker}"]
    proc = popen_train(data, f"hydra.run.dir={run}", *overrides, *pause)
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1][-3000:]
    if fast == "true":  # while it trains, its folder is its own: a resume of it is refused
        busy = run_cli("mnist_lit.train", f"resume={run}", pause[0], env={"PYTHONPATH": str(TESTS)},
                       timeout=120)
        assert busy.returncode == 1 and f"run {run} is in use" in busy.stderr, busy.stderr[-3000:]
    proc.send_signal(signal.SIGINT)
    marker.unlink()  # after the signal: the run goes on to the end of this training_step, then stops
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and f"resume={run}" in err and "interrupted by SIGINT in epoch 3" in err
    interrupted = json.loads((run / "metrics.json").read_text())
    assert interrupted["status"] == "interrupted" and interrupted["steps"] == 2 * 16 + 6
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (2, 38)
    assert not list(run.glob("checkpoints/.*.tmp"))

    # both ways to resume: `resume=<run dir>` (in that folder, with its config) and `ckpt_path=` (in a new
    # folder, with this command's config), side by side
    shutil.copy(run / "checkpoints" / "last.ckpt", tmp_path / "interrupted.ckpt")
    by_ckpt = popen_train(data, f"hydra.run.dir={tmp_path / 'by_ckpt'}", *overrides,
                          f"ckpt_path={tmp_path / 'interrupted.ckpt'}")
    # the test's own callback (recorded) is no target mnist-lit builds from a run folder: given again
    resumed = run_cli("mnist_lit.train", f"resume={run}", pause[0], env={"PYTHONPATH": str(TESTS)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    assert "exists and is not empty" not in resumed.stderr  # its own checkpoints: no warning about them
    # its fit time is both attempts' (the log line gives this attempt's, to 0.1 s)
    attempt = float(re.search(r"fit ([0-9.]+) s", resumed.stdout + resumed.stderr).group(1))
    total = json.loads((run / "metrics.json").read_text())["fit_seconds"]
    assert total == pytest.approx(interrupted["fit_seconds"] + attempt, abs=0.06)
    out, err = by_ckpt.communicate(timeout=300)
    assert by_ckpt.returncode == 0, err[-3000:]
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err[-3000:]

    first, second = compared(tmp_path / "sweep" / "0"), compared(tmp_path / "sweep" / "1")
    assert first == second  # determinism: bit-identical metrics
    assert first["status"] == "completed" and first["steps"] == 3 * 16
    assert compared(run) == first  # the interrupted + resumed run ends exactly as the uninterrupted one
    # the best epoch (0: val/acc is 1.0 from the start) came before the interruption, and is still chosen
    assert compared(tmp_path / "by_ckpt") == first
    assert (tmp_path / "by_ckpt" / "checkpoints" / first["best"]).is_file()
    assert json.loads((run / "metrics.json").read_text())["fast"] is (fast == "true")

    # resumed again after its last epoch (as if killed right after the last checkpoint): nothing left to
    # train, and metrics.json still has every score
    again = run_cli("mnist_lit.train", f"resume={run}", pause[0], env={"PYTHONPATH": str(TESTS)})
    assert again.returncode == 0, again.stderr[-3000:]
    assert compared(run) == first and first["best_val_acc"] is not None


@pytest.mark.slow
def test_training_longer_from_an_epochs_end_goes_on_with_the_next_epoch(synthetic_root, tmp_path):
    # the README's `ckpt_path=<run>/checkpoints/last.ckpt trainer.max_epochs=...`: saved at the end of
    # epoch 0, by either path, resumed by the other, it trains epoch 1 and ends as one run of 2 epochs
    base = [f"data.root={synthetic_root}", *[o for o in OVERRIDES if not o.startswith("trainer.max_epochs")]]
    first = popen_train("-m", "fast=true,false", "trainer.max_epochs=1",
                        f"hydra.sweep.dir={tmp_path / 'first'}", *base)
    whole = popen_train("trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'whole'}", *base)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    longer = {fast: popen_train("trainer.max_epochs=2", f"fast={fast}", f"hydra.run.dir={tmp_path / fast}",
                                f"ckpt_path={tmp_path / 'first' / job / 'checkpoints' / 'last.ckpt'}", *base)
              for fast, job in (("false", "0"), ("true", "1"))}  # job 0 ran fast=true, job 1 fast=false
    for proc in (whole, *longer.values()):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    expected = compared(tmp_path / "whole")
    assert expected["steps"] == 2 * 16 and expected["epochs"] == 2
    for fast in longer:
        assert compared(tmp_path / fast) == expected, fast


@pytest.mark.slow
def test_last_checkpoint_is_the_last_epoch_even_without_a_new_best(synthetic_root, tmp_path):
    # a learning rate too small to change val/acc: only epoch 0 is ever the best, yet last.ckpt must hold
    # the last epoch (a run killed with -9 continues from it), and continuing from it ends as one long run
    base = [f"data.root={synthetic_root}", *[o for o in OVERRIDES if not o.startswith("trainer.max_epochs")],
            "model.optimizer.lr=1e-12", "~callbacks.learning_curves", "~callbacks.test_images",
            "~callbacks.sample_digits"]
    first = popen_train("trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'first'}", *base)
    whole = popen_train("trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'whole'}", *base)
    for proc in (first, whole):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    ckpts = tmp_path / "first" / "checkpoints"
    assert [p.name[:8] for p in ckpts.glob("epoch*.ckpt")] == ["epoch00-"]  # the only best
    last = torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")
    assert (last["epoch"], last["global_step"]) == (1, 2 * 16)
    assert len(list(ckpts.glob("last*.ckpt"))) == 1
    longer = popen_train("trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'longer'}",
                         f"ckpt_path={ckpts / 'last.ckpt'}", *base)
    out, err = longer.communicate(timeout=300)
    assert longer.returncode == 0, err[-3000:]
    assert compared(tmp_path / "longer") == compared(tmp_path / "whole")
