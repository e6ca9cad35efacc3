"""logger=mlflow: a run's metrics in a local SQLite MLflow store, read back through MLflow's client."""

import json

import pytest
from conftest import SYNTHETIC_OVERRIDES, run_cli


@pytest.mark.slow
def test_mlflow_logger_records_the_run(synthetic_root, tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli("mnist_lit.train", f"data.root={synthetic_root}", *SYNTHETIC_OVERRIDES,
                   "trainer.max_epochs=2", "callbacks=none", "threads=1", "logger=mlflow",
                   f"logger.mlflow.tracking_uri={uri}",
                   f"hydra.run.dir={run_dir}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mnist_lit").experiment_id])
    assert run.info.run_name == str(run_dir) and run.info.status == "FINISHED"
    val_acc = client.get_metric_history(run.info.run_id, "val/acc")
    assert len(val_acc) == 2  # one value per epoch
    assert val_acc[-1].value == pytest.approx(metrics["metrics"]["val/acc"])
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test_acc"])
    # what changes results, as in TensorBoard's HPARAMS table
    assert run.data.params["optimizer/lr"] == "0.001" and run.data.params["data/batch_size"] == "32"
    assert "data/root" not in run.data.params
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard still logs beside it


def test_jobs_sharing_a_store_build_their_loggers_in_turn(tmp_path):
    # the first job to use a new SQLite store creates its tables; a second doing it at once would fail
    import fcntl
    import os
    import threading

    from omegaconf import OmegaConf

    from mnist_lit.config.building import build_loggers

    store = tmp_path / "mlflow.db"
    group = OmegaConf.create({"mlflow": {"_target_": "lightning.pytorch.loggers.MLFlowLogger",
                                         "experiment_name": "mnist_lit", "tracking_uri": f"sqlite:///{store}"}})
    other = os.open(f"{store}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)  # another job, building its loggers
    built = []
    job = threading.Thread(target=lambda: built.extend(build_loggers(group)))
    job.start()
    job.join(1.0)
    assert job.is_alive() and not built  # waits for its turn
    os.close(other)
    job.join(120)
    assert [type(logger).__name__ for logger in built] == ["MLFlowLogger"]
