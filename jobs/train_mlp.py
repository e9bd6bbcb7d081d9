"""``python -m jobs.train_mlp``: the training job with the MLP preset."""
import sys

from jobs.train import main

if __name__ == "__main__":
    sys.exit(main(preset="train_mlp"))
