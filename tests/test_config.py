"""Model configuration: derived depth and the errors bad values raise."""

import pytest

from implementations import ConfigError, ModelConfig, create, tlstm_depth


@pytest.mark.parametrize(
    "tensor_size, kernel_size, depth",
    [(1, 2, 1), (8, 2, 8), (8, 3, 8), (8, 4, 4), (7, 4, 4), (9, 5, 5), (1, 5, 1), (16, 3, 16)],
)
def test_depth_is_ceil_p_over_half_k(tensor_size, kernel_size, depth):
    assert tlstm_depth(tensor_size, kernel_size) == depth
    assert ModelConfig(4, 4, tensor_size, kernel_size).layers == depth


def test_gate_channels():
    assert ModelConfig(4, 8, 3, 3).gate_channels == 4 * 8 + 3
    assert ModelConfig(4, 8, 3, 5, mem_conv=False).gate_channels == 4 * 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tensor_size": 0}, r"tensor_size must be an integer >= 1, got 0"),
        ({"tensor_size": -3}, r"tensor_size must be an integer >= 1, got -3"),
        ({"kernel_size": 1}, r"kernel_size must be an integer >= 2, got 1"),
        ({"channels": 0}, r"channels must be an integer >= 1, got 0"),
        ({"input_size": 0}, r"input_size must be an integer >= 1, got 0"),
        ({"input_size": 2.5}, r"input_size must be an integer >= 1, got 2.5"),
        ({"norm": "layer"}, r"norm must be one of \(None, 'cn'\), got 'layer'"),
        ({"mem_conv": "yes"}, r"mem_conv must be True or False, got 'yes'"),
        ({"tensor_size": 4, "kernel_size": 3, "depth": 3}, r"depth=3 contradicts tensor_size=4 and kernel_size=3.*= 4"),
        ({"tensor_size": None, "depth": None}, r"give tensor_size \(tLSTM\) or depth"),
        ({"tensor_size": None, "depth": 0}, r"depth must be an integer >= 1, got 0"),
    ],
)
def test_bad_values_name_field_and_allowed_values(kwargs, message):
    base = {"input_size": 4, "channels": 4, "tensor_size": 2}
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**base, **kwargs})


def test_errors_raised_at_create():
    with pytest.raises(ConfigError, match="tensor_size must be"):
        create("tlstm_naive", input_size=4, channels=4, tensor_size=0)
    with pytest.raises(ConfigError, match="tlstm_naive is a tLSTM: tensor_size"):
        create("tlstm_naive", input_size=4, channels=4, depth=3)


def test_stacked_lstm_takes_depth_or_derives_it():
    assert ModelConfig(4, 4, depth=5).layers == 5
    lstm = create("lstm_cudnn", input_size=4, channels=4, tensor_size=6, kernel_size=4)
    assert lstm.num_layers == 3
