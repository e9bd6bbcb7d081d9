"""Ray Tune sweeps over the training job's config: search spaces, the runner, trials as training runs, the best trial exported."""
