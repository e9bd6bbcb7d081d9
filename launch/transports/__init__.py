"""How launchers reach compute, apart from any one backend: commands and files over SSH, the Kaggle API (uploads,
kernels, the quota ledger), Ray's Jobs client. Failures that pass are raised as ``launch.errors.Unreachable``."""
