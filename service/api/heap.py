"""The API process's heap: what is alive after start-up and each model load is frozen."""

import gc


def freeze_heap() -> None:
    """Keep what is alive now (TensorFlow's modules, loaded models) out of later collections.

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
