"""Hydra multiruns end to end on synthetic data: grid, joblib, submitit, a failing job, summaries (Optuna:
test_optuna.py)."""

import csv
import importlib
import io
import json
import math

import pytest
import yaml
from conftest import SYNTHETIC_OVERRIDES, run_cli, run_in_process

# one short epoch per job, no callbacks: these tests are about the sweep, not the training
SHORT = [*SYNTHETIC_OVERRIDES, "trainer.max_epochs=1", "callbacks=none"]


def sweep(synthetic_root, sweep_dir, *overrides, timeout=300):
    return run_cli("mnist_lit.train", "-m", f"data.root={synthetic_root}", *SHORT, *overrides,
                   f"hydra.sweep.dir={sweep_dir}", timeout=timeout)


def metrics(job_dir):
    return json.loads((job_dir / "metrics.json").read_text())


def hparams_of(tb_dir):
    """The HPARAMS plugin data TensorBoard reads from a run: hparam values, metric tags, and the scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData
    session = data.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = data.FromString(content["_hparams_/experiment"]).experiment
    values = {k: v.number_value if v.WhichOneof("kind") == "number_value" else v.string_value
              for k, v in session.hparams.items()}
    metric_tags = [m.name.tag for m in experiment.metric_infos]
    scalars = {tag: acc.Scalars(tag)[-1].value for tag in metric_tags if tag in acc.Tags()["scalars"]}
    differs = {info.name for info in experiment.hparam_infos if info.differs}
    return values, metric_tags, scalars, differs


def session_status(tb_dir) -> str:
    """How a run's session ended, for TensorBoard's HPARAMS status filter: STATUS_SUCCESS, STATUS_FAILURE."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_end_info"]
    return api_pb2.Status.Name(plugin_data_pb2.HParamsPluginData.FromString(content).session_end_info.status)


def test_swept_config_keys_name_their_hparams():
    from mnist_lit.reporting.callbacks import swept_hparams

    names = {"seed", "data/batch_size", "trainer/max_epochs", "optimizer/class", "optimizer/lr", "net/class",
             "net/hidden_sizes", "net/dropout", "scheduler", "model/label_smoothing"}
    assert swept_hparams(names, ["model.optimizer.lr", "data.batch_size"]) == {"optimizer/lr", "data/batch_size"}
    assert swept_hparams(names, ["model.net.hidden_sizes.0", "+model.label_smoothing"]) == {
        "net/hidden_sizes", "model/label_smoothing"}
    # a config group: everything of it (another optimizer, another network)
    assert swept_hparams(names, ["model/optimizer", "model/scheduler"]) == {"optimizer/class", "optimizer/lr",
                                                                           "scheduler"}
    assert swept_hparams(names, ["seed", "trainer.max_epochs"]) == {"seed", "trainer/max_epochs"}
    assert swept_hparams(names, ["data.root", "hydra.launcher.n_jobs"]) == set()
    assert swept_hparams(names, []) == set()


@pytest.mark.slow
def test_grid_sweep_jobs_tensorboard_and_summary(synthetic_root, tmp_path):
    # the default callbacks (checkpoints) but the misclassified-digits figure: synthetic tests have none
    proc = sweep(synthetic_root, tmp_path, "callbacks=default", "~callbacks.test_images",
                 "model.optimizer.lr=1e-3,3e-3", "data.batch_size=32,64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        m = metrics(job)
        assert m["status"] == "completed" and 0.0 <= m["test_acc"] <= 1.0 and m["best_val_acc"] is not None
        assert (job / "checkpoints" / "last.ckpt").is_file()
        listed = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        overrides = dict(o.split("=", 1) for o in listed)
        # TensorBoard's HPARAMS table: this job's own hyperparameters and final metrics
        values, tags, scalars, differs = hparams_of(job / "tensorboard")
        assert values["optimizer/lr"] == pytest.approx(float(overrides["model.optimizer.lr"]))
        assert values["data/batch_size"] == int(overrides["data.batch_size"])
        # what changes results, not the plumbing
        assert {"net/hidden_sizes", "optimizer/class", "trainer/max_epochs", "seed"} <= set(values)
        assert (values["trainer/precision"], values["trainer/gradient_clip_val"], values["data/normalize"],
                values["trainer/accumulate_grad_batches"], values["data/val_size"]) == ("32-true", "none",
                                                                                        "false", 1, 100)
        assert not {"data/root", "data/eval_batch_size", "steps_per_execution", "optimizer/fused"} & set(values)
        assert {"val/acc_best", "test/acc", "val/loss", "test/loss"} <= set(tags)
        # what the sweep varies is marked so: TensorBoard lists it first and shows it (five columns at first)
        assert differs == {"optimizer/lr", "data/batch_size"}
        assert tags[:2] == ["val/acc_best", "test/acc"]  # its first metric columns: accuracy
        assert session_status(job / "tensorboard") == "STATUS_SUCCESS"
        assert scalars["val/acc_best"] == pytest.approx(m["best_val_acc"])
        assert scalars["test/acc"] == pytest.approx(m["test_acc"])
        seen.add((values["optimizer/lr"], values["data/batch_size"]))
    assert len(seen) == 4

    proc = run_cli("mnist_lit.summarize", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split(" | ")[1:3] == ["model.optimizer.lr", "data.batch_size"]
    assert len(lines) == 2 + 4 and all("completed" in line for line in lines[2:])
    assert "4 completed" in proc.stderr
    assert (tmp_path / "summary.png").stat().st_size > 1000


class Composer:
    def load_sweep_config(self, master_config, sweep_overrides):
        return {"job": sweep_overrides}


def test_a_grid_composes_each_job_config_once(synthetic_root, tmp_path):
    # Hydra's basic sweeper composes each job to check the batch and again to launch it; mnist-lit's launches
    # the checked one. In this process (the basic launcher), counting Hydra's compositions
    import pickle
    from unittest import mock

    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    composed = []
    compose = ConfigLoaderImpl.load_sweep_config

    def counted(loader, master_config, sweep_overrides):
        composed.append(tuple(sweep_overrides))
        return compose(loader, master_config, sweep_overrides)

    with mock.patch.object(ConfigLoaderImpl, "load_sweep_config", counted):
        code, output = run_in_process("train", ["-m", "seed=1,2,2", f"data.root={synthetic_root}", *SHORT,
                                                "logger=csv", f"hydra.sweep.dir={tmp_path}"], synthetic_root)
    assert code == 0, output[-3000:]
    assert len(composed) == 3
    # each job ran its own config: its seed, its number (two jobs of the same overrides too)
    for i, seed in enumerate((1, 2, 2)):
        job = yaml.safe_load((tmp_path / str(i) / ".hydra" / "config.yaml").read_text())
        hydra_cfg = yaml.safe_load((tmp_path / str(i) / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert (job["seed"], hydra_cfg["job"]["num"], metrics(tmp_path / str(i))["seed"]) == (seed, i, seed)

    # a launcher that ships the jobs to other processes (joblib, submitit) composes there: nothing kept
    # the module as Hydra's plugin scan last loaded it, as a sweep pickles it
    loader = importlib.import_module("hydra_plugins.mnist_lit_basic.basic_sweeper").ComposedOnce(Composer())
    loader.compose_and_keep(None, ["seed=1"])
    assert loader.kept == {("seed=1",): [{"job": ["seed=1"]}]}
    assert pickle.loads(pickle.dumps(loader)).kept == {} and loader.kept == {}


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_without_oversubscription(synthetic_root, tmp_path):
    import joblib

    # the jobs sweep the network too: the CNN option sweeps as the MLP does
    proc = sweep(synthetic_root, tmp_path, "model/net=mlp,cnn", "hydra/launcher=joblib",
                 "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    threads = max(1, joblib.cpu_count() // 2)  # joblib limits each worker's thread pools to cores / n_jobs
    for i, params in ((0, 101_770), (1, 215_418)):
        m = metrics(tmp_path / str(i))
        assert m["status"] == "completed" and m["trainable_params"] == params
        assert f", {threads} threads)" in m["device"]


@pytest.mark.slow
def test_submitit_local_sweep(synthetic_root, tmp_path):
    proc = sweep(synthetic_root, tmp_path, "seed=1,2", "hydra/launcher=submitit_local",
                 "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i in (0, 1):
        m = metrics(tmp_path / str(i))
        assert m["status"] == "completed" and m["seed"] == i + 1
        assert ", 1 threads)" in m["device"]  # threads follows the launcher's cpus_per_task
    assert list((tmp_path / ".submitit").glob("*/*_result.pkl"))


@pytest.mark.slow
def test_failing_job_is_recorded_and_the_others_finish(synthetic_root, tmp_path):
    # jobs 0 and 2 fail on a bad value; job 1 still runs; the sweep names both failures at the end
    proc = sweep(synthetic_root, tmp_path, "data.batch_size=-1,32,0")
    assert proc.returncode == 1
    assert "job 0 failed" in proc.stdout  # logged when it failed
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert (f"error: 2 of the 3 jobs of the sweep {tmp_path} ended early: job 0 (failed: data.batch_size=-1 "
            "and" in proc.stderr and "; job 2 (failed: data.batch_size=0 and" in proc.stderr
            and f"python -m mnist_lit.summarize {tmp_path}" in proc.stderr), proc.stderr[-2000:]
    failed, done = metrics(tmp_path / "0"), metrics(tmp_path / "1")
    assert failed["status"] == "failed" and "data.batch_size=-1" in failed["error"]
    assert done["status"] == "completed" and 0.0 <= done["test_acc"] <= 1.0

    proc = run_cli("mnist_lit.summarize", str(tmp_path), "--csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [(r["job"], r["data.batch_size"], r["status"]) for r in rows] == [
        ("0", "-1", "failed"), ("1", "32", "completed"), ("2", "0", "failed")]
    assert rows[0]["val/acc_best"] == "" and "positive" in rows[0]["error"]
    assert float(rows[1]["test/acc"]) == pytest.approx(done["test_acc"], abs=1e-4)


@pytest.mark.slow
def test_a_sweep_refused_for_a_misspelt_key_leaves_its_folder_to_the_corrected_one(synthetic_root, tmp_path):
    proc = sweep(synthetic_root, tmp_path, "data.batchsize=32,64")
    assert proc.returncode == 1 and "did you mean data.batch_size?" in proc.stderr
    proc = sweep(synthetic_root, tmp_path, "data.batch_size=32,64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [metrics(tmp_path / job)["status"] for job in ("0", "1")] == ["completed", "completed"]


@pytest.mark.slow
def test_a_killed_joblib_worker_is_reported_in_one_paragraph(synthetic_root, tmp_path):
    # the jobs kill their worker processes (os.abort, as the out-of-memory killer would with SIGKILL)
    proc = sweep(synthetic_root, tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2",
                 "+callbacks.x._target_=os.abort")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (f"error: a worker process of the sweep {tmp_path} was killed (SIGABRT(-6)" in proc.stderr
            and f"python -m mnist_lit.train -m resume={tmp_path}" in proc.stderr), proc.stderr[-3000:]


def fake_job(sweep_dir, num, overrides, result):
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if result is not None:
        (job / "metrics.json").write_text(json.dumps(result))


def test_summary_of_seeds_failures_and_unfinished_jobs(tmp_path, capsys):
    from mnist_lit.summarize import main

    def done(val, test):
        return {"status": "completed", "best_val_acc": val, "test_acc": test, "fit_seconds": 3.0,
                "metrics": {"val/acc_best": val, "test/acc": test}}

    fake_job(tmp_path, 0, ["lr=0.1", "seed=1", "data.root=x"], done(0.90, 0.80))
    fake_job(tmp_path, 1, ["lr=0.1", "seed=2", "data.root=x"], done(0.94, 0.84))
    fake_job(tmp_path, 2, ["lr=0.01", "seed=1", "data.root=x"], done(0.97, 0.96))
    fake_job(tmp_path, 3, ["lr=0.01", "seed=2", "data.root=x"], {"status": "failed", "error": "boom | bang"})
    fake_job(tmp_path, 10, ["lr=0.01", "seed=3", "data.root=x"], None)
    main([str(tmp_path)])
    out, err = capsys.readouterr()
    tables = out.strip().split("\n\n")
    assert len(tables) == 2
    jobs = tables[0].splitlines()
    assert jobs[0] == "| job | lr | seed | val/acc_best | test/acc | fit s | status | error |"
    assert [line.split(" | ")[0] for line in jobs[2:]] == ["| 0", "| 1", "| 2", "| 3", "| 10"]
    assert "| failed | boom \\| bang |" in jobs[5] and "| unfinished |" in jobs[6]
    by_config = tables[1].splitlines()
    assert by_config[0] == "| lr | seeds | val/acc_best (mean ± std) | test/acc (mean ± std) |"
    std = math.sqrt(((0.90 - 0.92) ** 2 + (0.94 - 0.92) ** 2) / 1)
    assert f"| 0.1 | 2 | 0.9200 ± {std:.4f} | 0.8200 ± {std:.4f} |" in by_config
    assert "| 0.01 | 1 | 0.9700 ± 0.0000 | 0.9600 ± 0.0000 |" in by_config
    assert "3 completed, 1 failed, 1 unfinished" in err and "shared overrides: data.root=x" in err
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_summary_of_broken_jobs_and_an_unwritable_plot(tmp_path, capsys):
    from mnist_lit.summarize import main

    fake_job(tmp_path, 0, ["lr=0.1"], {"status": "completed", "best_val_acc": 0.9})
    fake_job(tmp_path, 1, ["lr=0.2"], [1, 2])  # metrics.json of no object
    fake_job(tmp_path, 2, ["lr=0.3"], {"status": "completed", "best_val_acc": 0.8})
    (tmp_path / "2" / ".hydra" / "overrides.yaml").write_text("- lr=0.3\n- [unclosed")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--plot", str(tmp_path / "notes.txt" / "plot.png")])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1
    rows = out.strip().split("\n\n")[0].splitlines()[2:]  # the table is printed all the same
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 1", "| 2"]
    assert "| unreadable | metrics.json holds no JSON object |" in rows[1]
    assert f"error: the plot {tmp_path / 'notes.txt' / 'plot.png'} was not written" in err


def test_summary_of_a_folder_without_jobs(tmp_path):
    proc = run_cli("mnist_lit.summarize", str(tmp_path))
    assert proc.returncode == 1 and "no jobs in" in proc.stderr and "Traceback" not in proc.stderr
