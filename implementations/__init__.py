"""Implementations of the tLSTM and its stacked-LSTM baseline, behind one registry.

    import implementations
    implementations.names()                       # ['lstm_cudnn', 'lstm_shared', 'tlstm_naive', ...]
    model = implementations.create("tlstm_naive", input_size=32, channels=64, tensor_size=4)
    y, (h, c) = model(x)                          # x: [B, T, 32] -> y: [B, T, 64]

Nothing here knows about timing; that lives in ``bench``.
"""

from .config import (
    ConfigError,
    ModelConfig,
    lstm_param_count,
    lstm_shared_param_count,
    tlstm_depth,
    tlstm_param_count,
)
from .registry import (
    ENTRY_POINT_GROUP,
    Implementation,
    ImplementationUnavailable,
    UnknownImplementation,
    build,
    create,
    family_param_count,
    family_reference,
    get,
    list_implementations,
    names,
    param_count,
    register,
    unregister,
)

# Importing a module registers what it defines. Add new built-in implementations here.
from . import lstm_cudnn, lstm_shared, tlstm_compiled, tlstm_fused, tlstm_naive  # noqa: E402,F401  isort: skip

__all__ = [
    "ENTRY_POINT_GROUP",
    "backend_name",
    "ConfigError",
    "Implementation",
    "ImplementationUnavailable",
    "ModelConfig",
    "UnknownImplementation",
    "build",
    "create",
    "family_param_count",
    "family_reference",
    "get",
    "list_implementations",
    "lstm_param_count",
    "lstm_shared_param_count",
    "names",
    "param_count",
    "register",
    "tlstm_depth",
    "tlstm_param_count",
    "unregister",
]


def backend_name(module, x) -> str:
    """The backend a module actually runs on input ``x`` (for the results' metadata)."""
    if hasattr(module, "backend_name"):
        return module.backend_name(x)
    return getattr(module, "backend", type(module).__name__)
