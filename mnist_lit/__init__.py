"""mnist-lit: the Keras MNIST MLP tutorial with PyTorch Lightning + Hydra."""

import os
import signal
import sys
from pathlib import Path

__version__ = "0.1.0"
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the Hydra configs, beside the package
# MKL's matrix products give the same bits whatever the thread count (read at MKL's first call): a run's
# numbers then do not depend on how many threads the load left it (mnist_lit/speed/threads.py)
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def _stop_at_once(signum, frame) -> None:
    os.write(2, b"\nstopped: interrupted (Ctrl-C) with nothing to save yet (a run saves a resumable "
                b"checkpoint once it trains): run the command again.\n")
    os._exit(130)


# `python -m mnist_lit.<command>` imports the package while it locates the command (argv[0] is "-m" only
# then): from its first line, Ctrl-C ends the command at once. A KeyboardInterrupt raised inside an import
# (torch's, numpy's, Hydra's) leaves modules half made and ends in tracebacks; a run takes Ctrl-C over once it
# has something to save (mnist_lit/runs/reliability.py StopOnSignal). A library's import changes nothing.
if sys.argv[:1] == ["-m"] and os.environ.get("HYDRA_FULL_ERROR") != "1":
    signal.signal(signal.SIGINT, _stop_at_once)
