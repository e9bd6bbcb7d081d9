"""What runs on the compute, next to the job: the unit runner (local and SSH), ``accelerate launch`` as every backend
runs it, a Kaggle kernel's side, a Ray job's entrypoint and Ray Train's workers. Nothing here imports a backend."""
