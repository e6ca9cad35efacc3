"""Hyperparameter search and sweeps: the Optuna study, a job as a trial, the search space, a sweep's jobs."""
