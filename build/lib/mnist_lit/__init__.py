"""mnist-lit: the Keras MNIST MLP tutorial with PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
