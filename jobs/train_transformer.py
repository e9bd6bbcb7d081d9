"""``python -m jobs.train_transformer``: the training job with the Transformer preset."""
import sys

from jobs.train import main

if __name__ == "__main__":
    sys.exit(main(preset="train_transformer"))
