# PLACEHOLDER: replaced by the pure-Python store (see docs/store.md).
DEFAULT_BUCKETS = ()
class Store:  # noqa: D101
    pass
