"""The summary computed before queuing must be exactly what Keras builds."""

import pytest

from service.architecture import ArchitectureError, ConvBlock, summarize
from service.ml.model import build_model
from service.spec import ExperimentCreate

ARCHITECTURES = [
    {"conv_layers": 0, "dense_units": [128]},
    {"conv_layers": 0, "dense_units": []},
    {"conv_layers": 1, "filters": 64},
    {"conv_layers": 2, "filters": 32},
    {"conv_layers": 3, "filters": 16},
    {"conv_layers": 1, "filters": 16, "pool_size": 0, "dense_units": [64, 32]},
    {
        "conv_layers": [
            {"filters": 16, "kernel_size": 5, "pool_size": None},
            {"filters": 32, "kernel_size": 3, "pool_size": 3},
            {"filters": 8, "kernel_size": 1},
        ],
        "dense_units": [10, 20, 30],
    },
    {"conv_layers": [{"filters": 4, "kernel_size": 28, "pool_size": 0}]},
]


@pytest.mark.parametrize("payload", ARCHITECTURES)
def test_summary_matches_keras_layers_shapes_and_parameter_counts(payload):
    spec = ExperimentCreate(**payload).to_spec()
    summary = spec.summary()
    model = build_model(spec)

    assert [layer.name for layer in summary.layers] == [layer.name for layer in model.layers]
    assert [layer.type for layer in summary.layers] == [
        type(layer).__name__ for layer in model.layers
    ]
    assert [layer.output_shape for layer in summary.layers] == [
        tuple(layer.output.shape) for layer in model.layers
    ]
    assert [layer.params for layer in summary.layers] == [
        layer.count_params() for layer in model.layers
    ]
    assert summary.total_params == model.count_params()
    flatten = model.get_layer("flatten")
    assert summary.flatten_size == flatten.output.shape[-1]


def test_kernel_larger_than_its_input_names_the_layer_and_input_size():
    blocks = [ConvBlock(32, 3, 2)] * 4
    with pytest.raises(
        ArchitectureError, match=r"conv_4 has a 3x3 kernel but its input is only 1x1"
    ):
        summarize(blocks, [128], batch_size=32)


def test_pool_window_larger_than_its_input_is_refused():
    blocks = [ConvBlock(8, 26, 4)]
    with pytest.raises(
        ArchitectureError, match=r"pool_1 has a 4x4 window but its input is only 3x3"
    ):
        summarize(blocks, [], batch_size=32)


def test_too_many_parameters_is_refused_with_the_count():
    blocks = [ConvBlock(512, 3, 0)]
    with pytest.raises(ArchitectureError, match=r"346,128,130 parameters, over the limit"):
        summarize(blocks, [1000], batch_size=32)


def test_too_much_activation_memory_per_batch_is_refused():
    blocks = [ConvBlock(512, 3, 2)]
    with pytest.raises(ArchitectureError, match=r"one batch of 4096 needs about .* GiB"):
        summarize(blocks, [1], batch_size=4096)
