"""Fashion-MNIST from local IDX files: an explicit directory, Debian's package, Keras's cache."""

import gzip
import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_DIR = Path.home() / ".keras" / "datasets" / "fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IDX_UBYTE = 0x08


class DatasetNotFoundError(RuntimeError):
    """No directory holds the four files and the download failed."""


@dataclass(frozen=True)
class FashionMNIST:
    """The raw images (uint8, N×28×28) and labels (uint8, N), and the files they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    files: tuple[Path, ...] = ()


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file, gzipped or not, as a uint8 array of the shape its header gives."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    dimensions = data[3]
    header_end = 4 + 4 * dimensions
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    array = np.frombuffer(data, dtype=np.uint8, offset=header_end)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {array.size} values, its header says {shape}")
    return array.reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def candidate_directories(explicit: Path | None) -> list[Path]:
    """Where to look, in order."""
    return [d for d in (explicit, DEBIAN_DIR, KERAS_CACHE_DIR) if d is not None]


def _complete_paths(directory: Path) -> dict[str, Path] | None:
    """The four files in one directory, or None where any is missing."""
    paths = {key: _find(directory, stem) for key, stem in FILES.items()}
    if any(path is None for path in paths.values()):
        return None
    return paths


def load_from_directory(directory: Path) -> FashionMNIST | None:
    """The data set from one directory, or None where any of the four files is missing."""
    paths = _complete_paths(directory)
    if paths is None:
        return None
    arrays = {key: read_idx(path) for key, path in paths.items()}
    return FashionMNIST(**arrays, files=tuple(paths.values()))


@lru_cache(maxsize=2)
def load_fashion_mnist(explicit_dir: Path | None = None) -> FashionMNIST:
    """Load once per process; download through Keras only when no local copy exists."""
    for directory in candidate_directories(explicit_dir):
        dataset = load_from_directory(directory)
        if dataset is not None:
            logger.info("Fashion-MNIST loaded from %s", directory)
            return dataset
    searched = ", ".join(str(d) for d in candidate_directories(explicit_dir))
    logger.warning("Fashion-MNIST not found in %s; trying Keras's download", searched)
    try:
        import keras

        (train_images, train_labels), (test_images, test_labels) = (
            keras.datasets.fashion_mnist.load_data()
        )
    except Exception as error:
        raise DatasetNotFoundError(
            f"Fashion-MNIST was not found in {searched} and could not be downloaded ({error}). "
            "Install Debian's dataset-fashion-mnist or set FASHION_MNIST_DIR."
        ) from error
    # Keras keeps what it downloaded in its cache, under the names this module looks for.
    downloaded = (_find(KERAS_CACHE_DIR, stem) for stem in FILES.values())
    return FashionMNIST(
        train_images,
        train_labels,
        test_images,
        test_labels,
        files=tuple(path for path in downloaded if path is not None),
    )


@lru_cache(maxsize=2)
def load_test_images(explicit_dir: Path | None = None) -> np.ndarray:
    """The 10,000 test images alone, from the directory `load_fashion_mnist` would read: the
    API shows some of them and has no use for the training set's 47 MB."""
    for directory in candidate_directories(explicit_dir):
        paths = _complete_paths(directory)
        if paths is not None:
            return read_idx(paths["test_images"])
    return load_fashion_mnist(explicit_dir).test_images


def data_digests(dataset: FashionMNIST) -> dict[str, str]:
    """File name → SHA-256 of each file the data set was read from."""
    return {path.name: file_sha256(path) for path in dataset.files}


@lru_cache(maxsize=len(FILES))
def file_sha256(path: Path) -> str:
    """Hashed once per process, as the data set is read once: the digests describe the arrays
    in memory, even should a file be replaced under a running worker."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def to_model_input(images: np.ndarray) -> np.ndarray:
    """Scale uint8 images to the float32 N×28×28×1 tensors the models train on."""
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]
