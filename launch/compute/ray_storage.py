"""What Ray itself keeps in a run's storage (Tune experiments, Ray Train checkpoints) beside the run directory's own files:
the launcher and the nodes copy the run directory without it, since Ray restores it on its own terms."""
RAY_STATE = ("tune/", "ray-train/")


def without_ray_state(entries: dict) -> dict:
    return {rel: entry for rel, entry in entries.items() if not rel.startswith(RAY_STATE)}
