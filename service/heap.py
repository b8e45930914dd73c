"""A long-lived process's heap: what it holds for good (the backend's modules, loaded models)
is frozen, out of the collector's way."""

import gc


def freeze_heap() -> None:
    """Keep what is alive now out of later collections.

    A full collection walks every tracked object, and a process with Keras loaded holds about
    400,000: each took 150–200 ms with the GIL held and freed nothing (bench/gc_pause.py).
    Frozen objects are skipped, here too: at start-up nothing is frozen yet, and a process
    that starts app after app (the tests start hundreds) does not walk again what an earlier
    one froze.
    """
    gc.collect()
    gc.freeze()


def refreeze_heap() -> None:
    """After a model load: unfreeze first, so that a model evicted since is collected."""
    gc.unfreeze()
    freeze_heap()
