"""Layer shapes and parameter counts of a spec, computed without building the model.

The API validates and summarizes every spec before it is queued, so an impossible or absurd
network is refused at once. `tests/test_architecture.py` pins these numbers to Keras's own.
"""

from dataclasses import asdict, dataclass
from math import prod

IMAGE_SIZE = 28
CHANNELS = 1
NUM_CLASSES = 10
FLOAT_BYTES = 4

MAX_TOTAL_PARAMS = 20_000_000
MAX_ACTIVATION_BYTES = 2 * 1024**3


class ArchitectureError(ValueError):
    """A spec whose layers cannot be built, or are too large to train here."""


@dataclass(frozen=True)
class ConvBlock:
    filters: int
    kernel_size: int
    pool_size: int | None


@dataclass(frozen=True)
class LayerSummary:
    name: str
    type: str
    output_shape: tuple[int | None, ...]
    params: int


@dataclass(frozen=True)
class ModelSummary:
    layers: list[LayerSummary]
    total_params: int
    flatten_size: int
    activation_bytes_per_batch: int

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(
    conv_blocks: list[ConvBlock], dense_units: list[int], *, batch_size: int
) -> ModelSummary:
    """Walk the stack as Keras builds it (valid padding, pooling stride = pool size)."""
    height = width = IMAGE_SIZE
    channels = CHANNELS
    layers: list[LayerSummary] = []

    for index, block in enumerate(conv_blocks, start=1):
        if block.kernel_size > min(height, width):
            raise ArchitectureError(
                f"conv_{index} has a {block.kernel_size}x{block.kernel_size} kernel but its input "
                f"is only {height}x{width}: use fewer conv layers, a smaller kernel_size or "
                "less pooling"
            )
        height, width = height - block.kernel_size + 1, width - block.kernel_size + 1
        params = (block.kernel_size * block.kernel_size * channels + 1) * block.filters
        channels = block.filters
        layers.append(
            LayerSummary(f"conv_{index}", "Conv2D", (None, height, width, channels), params)
        )

        if block.pool_size:
            if block.pool_size > min(height, width):
                raise ArchitectureError(
                    f"pool_{index} has a {block.pool_size}x{block.pool_size} window but its input "
                    f"is only {height}x{width}: use a smaller pool_size, or 0 for no pooling"
                )
            height, width = height // block.pool_size, width // block.pool_size
            layers.append(
                LayerSummary(f"pool_{index}", "MaxPooling2D", (None, height, width, channels), 0)
            )

    flatten_size = height * width * channels
    layers.append(LayerSummary("flatten", "Flatten", (None, flatten_size), 0))

    inputs = flatten_size
    for index, units in enumerate(dense_units, start=1):
        layers.append(LayerSummary(f"dense_{index}", "Dense", (None, units), (inputs + 1) * units))
        inputs = units
    layers.append(LayerSummary("output", "Dense", (None, NUM_CLASSES), (inputs + 1) * NUM_CLASSES))

    total_params = sum(layer.params for layer in layers)
    if total_params > MAX_TOTAL_PARAMS:
        raise ArchitectureError(
            f"the network has {total_params:,} parameters, over the limit of "
            f"{MAX_TOTAL_PARAMS:,}: use fewer filters or dense units, or pool before flattening "
            f"(flatten_size is {flatten_size:,})"
        )

    values_per_image = IMAGE_SIZE * IMAGE_SIZE * CHANNELS + sum(
        prod(layer.output_shape[1:]) for layer in layers
    )
    activation_bytes = values_per_image * FLOAT_BYTES * batch_size
    if activation_bytes > MAX_ACTIVATION_BYTES:
        raise ArchitectureError(
            f"one batch of {batch_size} needs about {activation_bytes / 1024**3:.1f} GiB of "
            f"activations, over the limit of {MAX_ACTIVATION_BYTES / 1024**3:.0f} GiB: "
            "use a smaller batch_size or fewer filters"
        )

    return ModelSummary(layers, total_params, flatten_size, activation_bytes)
