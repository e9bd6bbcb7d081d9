"""One exception type for every problem with a shard set, so callers can turn it into a clean CLI error."""


class ShardError(ValueError):
    """A shard set is missing, malformed or does not match its manifest; the message says which file and what to do."""
