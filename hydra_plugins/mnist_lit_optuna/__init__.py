"""mnist-lit's Optuna sweeper for Hydra (`hydra/sweeper=mnist_optuna`): current Optuna through ask-and-tell.

Hydra imports every module under hydra_plugins/ at start-up: this one imports optuna only when a sweep runs.
"""
