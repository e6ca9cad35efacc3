"""mnist-lit's grid sweeper for Hydra (`hydra/sweeper=mnist_basic`, the default of `python -m mnist_lit.train
-m`): Hydra's basic sweeper, with each job's config composed once instead of twice."""
