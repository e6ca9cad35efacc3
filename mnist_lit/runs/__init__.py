"""Run folders: a folder of its own for every run, attempts and exact resume, safe loading of a trained run
(checkpoints, the allowlist), metrics.json, and files written so that a failure loses nothing."""
