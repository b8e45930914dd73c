"""Thread budgets for the Keras backend; they only take effect before the backend starts."""

import os

# TensorFlow reads the first two when it creates its thread pools; PyTorch and the BLAS
# libraries read the third.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def limit_backend_threads(threads: int) -> None:
    """Give this process (and the processes it starts) at most `threads` compute threads; 0
    leaves the backend its default of all cores."""
    if threads:
        for variable in THREAD_VARIABLES:
            os.environ[variable] = str(threads)
