"""What a run prints while it trains: one kept line per epoch, counted from 1, on the console and in
train.log alike; no control characters where the output is no terminal; on a terminal, a live bar that
counts epochs from 1 too; the same lines with and without the speed layer, and in a resumed run."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from conftest import PROJECT, SYNTHETIC_OVERRIDES, run_cli

LINE = re.compile(r"epoch (\d+)/(\d+)  (\d+) steps  [\d.]+ s  train/loss ([\d.]+)  train/acc ([\d.]+)  "
                  r"val/loss ([\d.]+)  val/acc ([\d.]+)(  \(best\))?$")


def epoch_lines(text: str) -> list[tuple]:
    """(epoch, of, steps, train/loss, train/acc, val/loss, val/acc, best) of each epoch line in `text`."""
    found = []
    for line in text.splitlines():
        match = LINE.search(line.rstrip())
        if match:
            found.append(match.groups())
    return found


def train(run_dir, root, *overrides: str) -> subprocess.CompletedProcess:
    proc = run_cli("mnist_lit.train", f"hydra.run.dir={run_dir}", f"data.root={root}", "seed=0",
                   *SYNTHETIC_OVERRIDES, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_line_per_epoch_on_the_console_and_in_train_log(tmp_path, synthetic_root):
    proc = train(tmp_path / "run", synthetic_root, "trainer.max_epochs=3")
    console = proc.stdout + proc.stderr
    lines = epoch_lines(console)
    assert [(e, of) for e, of, *_ in lines] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert [line[2] for line in lines] == ["16"] * 3  # 500 digits at batch 32: 16 optimizer steps an epoch
    assert epoch_lines((tmp_path / "run" / "train.log").read_text()) == lines
    # not a terminal: nothing redrawn, no control characters, and no zero-based "Epoch 0/2" anywhere
    assert "\x1b" not in console and "\r" not in console
    assert "Epoch 0" not in console
    # the last line's numbers are the run's final ones (metrics.json, TensorBoard)
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    *_, train_loss, train_acc, val_loss, val_acc, _ = lines[-1]
    assert float(val_acc) == pytest.approx(final["val/acc"], abs=5e-5)
    assert float(train_loss) == pytest.approx(final["train/loss"], abs=5e-5)
    # "(best)" marks the epochs whose val/acc beat every earlier one: the checkpoint kept
    best = -1.0
    for *_, acc, mark in lines:
        assert (mark is not None) == (float(acc) > best)
        best = max(best, float(acc))


def test_the_lines_are_the_same_without_the_speed_layer_and_in_a_resumed_run(tmp_path, synthetic_root):
    fast = epoch_lines(train(tmp_path / "fast", synthetic_root, "trainer.max_epochs=3").stdout)
    plain = epoch_lines(train(tmp_path / "plain", synthetic_root, "trainer.max_epochs=3", "fast=false").stdout)
    assert fast == plain and len(fast) == 3
    train(tmp_path / "resumed", synthetic_root, "trainer.max_epochs=2")
    proc = run_cli("mnist_lit.train", f"resume={tmp_path / 'resumed'}", "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the resumed run goes on counting where it stopped (from its last checkpoint: a completed run's
    # last.ckpt is from within its last epoch, trained again), and its train.log holds every epoch's line
    resumed = [line[:2] for line in epoch_lines(proc.stdout)]
    assert resumed[-1] == ("3", "3") and all(int(epoch) >= 2 for epoch, _ in resumed)
    assert [line[:2] for line in epoch_lines((tmp_path / "resumed" / "train.log").read_text())] == [
        ("1", "2"), ("2", "2"), *resumed]


def on_a_terminal(args: list[str], timeout: float = 300) -> str:
    """What `python -m mnist_lit.train args` writes to a terminal (a pseudo-terminal, 160 columns)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on the terminal
        os.chdir(PROJECT)
        os.environ.update(COLUMNS="160", LINES="50", TERM="xterm")
        os.execv(sys.executable, [sys.executable, "-m", "mnist_lit.train", *args])
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not data:
                break
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_a_live_bar_counts_epochs_from_1(tmp_path, synthetic_root):
    screen = on_a_terminal([f"hydra.run.dir={tmp_path / 'run'}", f"data.root={synthetic_root}", "seed=0",
                            *SYNTHETIC_OVERRIDES, "trainer.max_epochs=2"])
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert "Epoch 1/2" in plain and "Epoch 2/2" in plain  # the bar's own count, from 1
    assert "Epoch 0/1" not in plain and "Epoch 1/1" not in plain
    # while the first epoch runs, its running training scores (no epoch has logged any yet)
    assert re.search(r"Epoch 1/2 .*train/loss: \d", plain.replace("\n", " "))
    lines = epoch_lines(plain.replace("\r", "\n"))
    assert [line[:2] for line in lines] == [("1", "2"), ("2", "2")]  # each kept once, above the bar
    assert epoch_lines((tmp_path / "run" / "train.log").read_text()) == lines
