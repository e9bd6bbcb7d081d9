"""``python -m jobs.train_mlp``: the training job with the MLP preset."""

from jobs import exit_job, train


def main(argv: list[str] | None = None, on_epoch_end=None) -> int:
    return train.main(argv, preset="train_mlp", on_epoch_end=on_epoch_end)


if __name__ == "__main__":
    exit_job(main())
