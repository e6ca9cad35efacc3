"""mnist-lit: the Keras MNIST MLP tutorial with PyTorch Lightning + Hydra."""

from pathlib import Path

__version__ = "0.1.0"
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the Hydra configs, beside the package
