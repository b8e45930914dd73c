"""The Keras backend beneath the models: its name, version and GPUs, the CPU's name, the
determinism switch, and forgetting finished runs."""

import importlib
import platform
from pathlib import Path

import keras

CPU_INFO = Path("/proc/cpuinfo")


def backend_name() -> str:
    """The active Keras backend: 'tensorflow', 'jax' or 'torch'."""
    return keras.backend.backend()


def available_gpus() -> list[str]:
    """Names of the GPUs the active Keras backend can use, e.g. 'NVIDIA H100 80GB HBM3'."""
    backend = backend_name()
    if backend == "tensorflow":
        import tensorflow as tf

        return [
            tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")
        ]
    if backend == "jax":
        import jax

        return [device.device_kind for device in jax.devices() if device.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def backend_version() -> str:
    """The version of the library beneath Keras, e.g. '2.21.0' for TensorFlow."""
    return importlib.import_module(backend_name()).__version__


def device_name(kind: str) -> str:
    """What ran the training: the GPU's name, or the CPU's model."""
    gpus = available_gpus() if kind == "gpu" else []
    return gpus[0] if gpus else cpu_name()


def cpu_name() -> str:
    """The CPU's model as Linux names it, else as the platform module does."""
    try:
        for line in CPU_INFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def set_determinism(enabled: bool) -> None:
    """Make the backend's kernels pick deterministic algorithms for this run, or not.

    TensorFlow's op determinism has no public switch back, so once a seeded run turns it on
    it stays on for the rest of this training process: later runs here get deterministic
    kernels too, a little slower, until the worker renews the process. That is acceptable;
    a private switch back would not be. PyTorch's switch is turned off again, because a later
    GPU run in the same process would fail on CUDA kernels with no deterministic form. JAX on
    the CPU is deterministic without a switch.
    """
    backend = backend_name()
    if backend == "tensorflow" and enabled:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(enabled)


def describe_device(kind: str) -> str:
    """The label stored on an experiment: 'CPU' or 'GPU:0 (<name>)'."""
    if kind == "gpu":
        gpus = available_gpus()
        return f"GPU:0 ({gpus[0]})" if gpus else "GPU:0"
    return "CPU"


def clear_backend_state() -> None:
    """Forget every model built so far but those kept for reuse, so a training process that
    lives across experiments does not grow with each one: Keras's global state, the backend's
    graphs and kernel caches, and (through a full collection) the reference cycles a model and
    its layers form.
    """
    if backend_name() == "tensorflow":
        _forget_custom_gradients()
    keras.backend.clear_session()


def _forget_custom_gradients() -> None:
    """Drop the gradient functions TensorFlow registered while tracing finished runs.

    Its default distribution strategy sums the gradients of every traced training step
    through `tf.custom_gradient`, which registers a gradient function under a fresh
    `CustomGradient-<uid>` name in a process-wide registry and never removes it; each one
    holds its traced graph (about 8 MB per small experiment with TensorFlow 2.21), and
    `clear_session` leaves them there. Between experiments no tracing is under way to need
    them: the steps of the models the child keeps (service/ml/compiled.py) were traced with
    their gradients. Best effort: should TensorFlow rename its registry, nothing is dropped
    and the worker's TRAINER_MAX_RSS_BYTES still bounds the process.
    """
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    if isinstance(registry, dict):
        for name in [name for name in registry if name.startswith("CustomGradient-")]:
            del registry[name]
