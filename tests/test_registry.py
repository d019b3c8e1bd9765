"""The registry: lookup, listing, duplicates, unknown names, options, third-party entry points."""

import subprocess
import sys
import textwrap

import pytest
import torch

import implementations
from implementations import ConfigError, ImplementationUnavailable, ModelConfig, UnknownImplementation


def test_builtins_registered():
    assert {"tlstm_naive", "lstm_cudnn", "lstm_shared"} <= set(implementations.names())
    assert implementations.get("tlstm_naive").family == "tlstm"
    assert implementations.get("lstm_cudnn").family == "lstm" and implementations.get("lstm_shared").family == "lstm"


def test_glob_and_family_filters():
    assert "lstm_cudnn" not in implementations.names("tlstm_*")
    assert "tlstm_naive" in implementations.names("tlstm_*")
    assert implementations.names(family="lstm") == [i.name for i in implementations.list_implementations(family="lstm")]
    assert all(implementations.get(n).family == "tlstm" for n in implementations.names(family="tlstm"))
    assert implementations.names(["nothing*", "lstm_c*"]) == ["lstm_cudnn"]


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownImplementation) as info:
        implementations.get("tlstm_nope")
    assert "tlstm_nope" in str(info.value) and "tlstm_naive" in str(info.value) and "lstm_cudnn" in str(info.value)


def test_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        implementations.register("tlstm_naive", family="tlstm")(lambda config, **kw: None)


def test_bad_family_is_an_error():
    with pytest.raises(ValueError, match="family must be one of"):
        implementations.register("x_bad_family", family="gru")


def test_options_reach_builder_and_unsupported_dtype_and_device_refused():
    seen = {}

    @implementations.register("x_fake_opts", family="tlstm", devices=("cpu",), dtypes=(torch.float32,))
    def _build(config, *, device, dtype, flavour="plain"):
        seen.update(flavour=flavour, device=device, dtype=dtype, config=config)
        return torch.nn.Identity()

    try:
        implementations.create("x_fake_opts", input_size=3, channels=4, tensor_size=2, flavour="spicy")
        assert seen["flavour"] == "spicy" and seen["config"].layers == 2
        with pytest.raises(ConfigError, match="dtype float64 is not supported by x_fake_opts; allowed: float32"):
            implementations.create("x_fake_opts", input_size=3, channels=4, tensor_size=2, dtype=torch.float64)
        with pytest.raises(ImplementationUnavailable, match=r"runs on \['cpu'\], not on cuda"):
            implementations.create("x_fake_opts", input_size=3, channels=4, tensor_size=2, device="cuda")
    finally:
        implementations.unregister("x_fake_opts")


def test_availability_reason_is_reported():
    @implementations.register("x_fake_unavail", family="tlstm", availability=lambda device: "no compiler found")
    def _build(config, *, device, dtype):
        raise AssertionError("must not be built")

    try:
        assert implementations.get("x_fake_unavail").unavailable_reason("cpu") == "no compiler found"
        with pytest.raises(ImplementationUnavailable, match="no compiler found"):
            implementations.create("x_fake_unavail", input_size=3, channels=4, tensor_size=2)
    finally:
        implementations.unregister("x_fake_unavail")


def test_param_count_and_reference_hooks():
    config = ModelConfig(3, 4, depth=2)
    assert implementations.get("lstm_cudnn").param_count is None and implementations.get("lstm_cudnn").reference is None
    assert implementations.param_count("lstm_cudnn", config) == implementations.lstm_param_count(config)
    assert implementations.param_count("tlstm_naive", ModelConfig(3, 4, 2)) == implementations.tlstm_param_count(
        ModelConfig(3, 4, 2))

    def reference(config, device):
        return torch.nn.Linear(1, 1, dtype=torch.float64, device=device)

    @implementations.register("x_fake_hooks", family="lstm", param_count=lambda config: 42, reference=reference)
    def _build(config, *, device, dtype):
        return torch.nn.Identity()

    try:
        assert implementations.param_count("x_fake_hooks", config) == 42
        assert implementations.get("x_fake_hooks").reference is reference
        with pytest.raises(UnknownImplementation, match="x_nope"):
            implementations.param_count("x_nope", config)
    finally:
        implementations.unregister("x_fake_hooks")


def test_third_party_entry_point(tmp_path):
    """A package that is not part of this repository registers through the entry-point group."""
    (tmp_path / "my_tlstm_plugin.py").write_text(
        textwrap.dedent(
            """
            import torch
            import implementations

            def register():
                @implementations.register("plugin_tlstm", family="tlstm", description="from a plugin")
                def build(config, *, device, dtype):
                    return implementations.create("tlstm_naive",
                                                  **{k: v for k, v in config.as_dict().items() if k != "depth"},
                                                  device=device, dtype=dtype)
            """
        )
    )
    dist = tmp_path / "my_tlstm_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-tlstm-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{implementations.ENTRY_POINT_GROUP}]\nplugin_tlstm = my_tlstm_plugin:register\n"
    )
    code = (
        "import implementations as I; print(I.names()); "
        "m = I.create('plugin_tlstm', input_size=3, channels=4, tensor_size=2); print(type(m).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, check=True
    ).stdout
    assert "plugin_tlstm" in out and "TLSTMNaive" in out
