"""Ray Tune sweeps over the training job's config (search spaces, runner, best-trial export): issue #5."""
