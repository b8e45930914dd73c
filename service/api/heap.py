"""The API process's heap: what is alive after start-up and each model load is frozen."""

import gc


def freeze_heap() -> None:
    """Keep what is alive now (TensorFlow's modules, loaded models) out of later collections.

    A full collection walks every tracked object, and a process with Keras loaded holds about
    400,000: each took 150–200 ms with the GIL held and freed nothing (bench/gc_pause.py).
    Frozen objects are skipped. Unfreezing first lets a model evicted since be collected.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
