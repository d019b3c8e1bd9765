"""One registry of implementations: a name, what it supports, and a builder from a ModelConfig.

Registering an implementation is the only step needed for it to appear in the CLI, the sweeps, the
tests and the report. Third-party packages register through the entry-point group
``tlstm_bench.implementations``: each entry point names a module (importing it registers) or a
zero-argument function (calling it registers).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from importlib import metadata
from typing import Any

import torch
from torch import nn

from .config import FAMILIES, ConfigError, ModelConfig, lstm_param_count, tlstm_param_count

ENTRY_POINT_GROUP = "tlstm_bench.implementations"

Builder = Callable[..., nn.Module]
Availability = Callable[[torch.device], "str | None"]
ParamCount = Callable[[ModelConfig], int]
ReferenceBuilder = Callable[[ModelConfig, torch.device], nn.Module]
StepFlops = Callable[[int, int, int], int]

# The parameter count of a family's implementations when one does not give its own.
FAMILY_PARAM_COUNT: dict[str, ParamCount] = {"tlstm": tlstm_param_count, "lstm": lstm_param_count}


class UnknownImplementation(KeyError):
    """Raised for a name that is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ImplementationUnavailable(RuntimeError):
    """The implementation cannot run here (no compiler, no GPU, ...); the message says why."""


def _always_available(device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class Implementation:
    """A registered implementation.

    Attributes:
        name: registry name, e.g. "tlstm_naive".
        family: "tlstm" or "lstm".
        builder: ``builder(config, device=..., dtype=..., **options) -> nn.Module``.
        devices: device types it runs on ("cpu", "cuda").
        dtypes: dtypes it accepts.
        description: one line for listings.
        availability: ``availability(device) -> None`` if it can run on that device, else the reason.
        param_count: ``param_count(config) -> int``, its parameter count without building it; None: the
            family's formula (``tlstm_param_count`` or ``lstm_param_count``). See :func:`param_count`.
        reference: ``reference(config, device) -> nn.Module``, the float64 module the correctness gate
            compares it with, with the same parameter names (the implementation's ``state_dict`` loads
            into it); None: the family's reference (the tLSTM registered with ``family_reference``, the
            native nn.LSTM for stacked LSTMs).
        family_reference: it is its family's readable reference: the correctness gate's float64 oracle for
            the family's other implementations, and what the report's speedups are measured against.
        shares_weights: a stacked LSTM whose L layers share one set of weights (its width does not
            shrink with depth at a fixed parameter budget; the report names it "sLSTM (shared)").
        step_flops: ``step_flops(R, M, L) -> int``, a stacked LSTM's forward FLOPs per sample and step
            when not the stacked LSTM's formula (``bench.contract.lstm_step_flops``).
        style: (colour, marker) of its lines in every figure; None: derived from a hash of the name.
    """

    name: str
    family: str
    builder: Builder
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    description: str = ""
    availability: Availability = field(default=_always_available)
    param_count: ParamCount | None = None
    reference: ReferenceBuilder | None = None
    family_reference: bool = False
    shares_weights: bool = False
    step_flops: StepFlops | None = None
    style: tuple[str, str] | None = None

    def unavailable_reason(self, device: torch.device | str) -> str | None:
        """None if this implementation can run on ``device``, else a sentence saying why not."""
        device = torch.device(device)
        if device.type not in self.devices:
            return f"{self.name} runs on {list(self.devices)}, not on {device.type}"
        if device.type == "cuda" and not torch.cuda.is_available():
            return "no CUDA GPU is available"
        return self.availability(device)

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        return dtype in self.dtypes


_REGISTRY: dict[str, Implementation] = {}
_plugins_loaded = False


def register(name: str, *, family: str, devices: Iterable[str] = ("cpu", "cuda"),
             dtypes: Iterable[torch.dtype] = (torch.float32, torch.float64), availability: Availability | None = None,
             **facts: Any) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder`` under ``name``. A duplicate name is an error.

    ``facts``: the other fields of :class:`Implementation` (``description``, ``param_count``, ``reference``,
    ``family_reference``, ``shares_weights``, ``step_flops``, ``style``), each needed only where the
    family's default does not fit."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    known = {f.name for f in fields(Implementation)} - {"name", "family", "builder", "devices", "dtypes",
                                                         "availability"}
    unknown = sorted(set(facts) - known)
    if unknown:
        raise TypeError(f"register({name!r}): unknown field(s) {', '.join(unknown)}; "
                        f"allowed: {', '.join(sorted(known))}")

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"implementation {name!r} is already registered")
        _REGISTRY[name] = Implementation(name=name, family=family, builder=builder, devices=tuple(devices),
                                         dtypes=tuple(dtypes), availability=availability or _always_available,
                                         **facts)
        return builder

    return decorator


def unregister(name: str) -> None:
    """Remove a registration (for tests that register fakes)."""
    _REGISTRY.pop(name, None)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            if callable(loaded):
                loaded()
        except Exception as exc:  # a broken plugin must not break the suite's own listing
            warnings.warn(f"entry point {ep.name!r} ({ep.value}) failed to load: {exc!r}", stacklevel=2)


def get(name: str) -> Implementation:
    """The registered implementation called ``name``; an unknown name lists the known ones."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise UnknownImplementation(f"unknown implementation {name!r}; registered: {known}") from None


def param_count(name: str, config: ModelConfig) -> int:
    """The parameter count of implementation ``name`` built from ``config``, without building it: its own
    ``param_count`` if registered with one, else its family's formula."""
    impl = get(name)
    count = impl.param_count or FAMILY_PARAM_COUNT[impl.family]
    return count(config)


def family_reference(family: str) -> str | None:
    """The name of the family's readable reference implementation (registered with ``family_reference``)."""
    return next((impl.name for impl in list_implementations(family=family) if impl.family_reference), None)


def family_param_count(family: str, config: ModelConfig) -> int:
    """The parameter count of a model of ``family`` built from ``config`` by the family's formula."""
    return FAMILY_PARAM_COUNT[family](config)


def list_implementations(pattern: str | Iterable[str] = "*", family: str | None = None) -> list[Implementation]:
    """Registered implementations whose name matches a glob (or any of several), sorted by name."""
    _load_plugins()
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [
        impl
        for name, impl in sorted(_REGISTRY.items())
        if any(fnmatch.fnmatchcase(name, p) for p in patterns) and (family is None or impl.family == family)
    ]


def names(pattern: str | Iterable[str] = "*", family: str | None = None) -> list[str]:
    """Names of the registered implementations matching ``pattern``."""
    return [impl.name for impl in list_implementations(pattern, family)]


def create(
    name: str,
    *,
    input_size: int,
    channels: int,
    tensor_size: int | None = None,
    kernel_size: int = 3,
    mem_conv: bool = True,
    norm: str | None = None,
    depth: int | None = None,
    dims: int = 2,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **options,
) -> nn.Module:
    """Build the implementation ``name`` for these sizes, on ``device`` in ``dtype``.

    tLSTMs need ``tensor_size`` and derive their depth (``dims=3``: the 3D tLSTM); stacked LSTMs take
    ``depth`` (or the depth a tLSTM of ``tensor_size`` would have). Extra keyword ``options`` go to the
    builder (for example ``backend="triton"`` for ``tlstm_fused``).
    """
    config = ModelConfig(
        input_size=input_size,
        channels=channels,
        tensor_size=tensor_size,
        kernel_size=kernel_size,
        mem_conv=mem_conv,
        norm=norm,
        depth=depth,
        dims=dims,
    )
    return build(name, config, device=device, dtype=dtype, **options)


def build(
    name: str,
    config: ModelConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **options,
) -> nn.Module:
    """Like :func:`create`, from a ready ModelConfig."""
    impl = get(name)
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if impl.family == "lstm" and config.dims != 2:
        raise ConfigError(f"dims={config.dims}: {name} is a stacked LSTM, which has no dims; allowed dims: 2 "
                          "(3 is the 3D tLSTM)")
    if impl.family == "tlstm" and config.tensor_size is None:
        raise ConfigError(f"{name} is a tLSTM: tensor_size must be an integer >= 1, got None")
    if not impl.supports_dtype(dtype):
        allowed = ", ".join(str(d).removeprefix("torch.") for d in impl.dtypes)
        raise ConfigError(f"dtype {str(dtype).removeprefix('torch.')} is not supported by {name}; allowed: {allowed}")
    reason = impl.unavailable_reason(device)
    if reason is not None:
        raise ImplementationUnavailable(f"{name} is unavailable: {reason}")
    return impl.builder(config, device=device, dtype=dtype, **options)
