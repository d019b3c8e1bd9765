"""``tlstm_compiled``: the reference tLSTM with its step function under ``torch.compile``.

What a PyTorch user would try first. Only the step (equations (2)-(8) of ``tlstm_naive``) is
compiled, not the unrolled sequence: compiling a loop of T+L-1 steps takes minutes to hours on a
CPU, one step takes seconds. Same parameters and equations as ``tlstm_naive`` (it subclasses it), so
either loads the other's ``state_dict``.

Two traps, handled here:
- dynamo keeps compiled code per Python function, and after ``recompile_limit`` (8) new guards it
  silently runs eager. Building a model resets dynamo, and the step is compiled with
  ``fullgraph=True`` so that hitting the limit raises instead of quietly falling back.
- Inductor's vectorized CPU code has been seen (torch 2.13) to give wrong gradients for a
  conv1d-plus-softmax formulation of the memory-cell convolution. Nothing is hidden here: the registry's
  contract test and the sweep's correctness gate compare this implementation with ``tlstm_naive``, output
  and gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig
from .registry import register
from .tlstm_naive import TLSTMNaive


def _naive_step(module: TLSTMNaive, z: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    return TLSTMNaive.step(module, z, h, c)


class TLSTMCompiled(TLSTMNaive):
    """``TLSTMNaive`` whose per-step function is compiled by ``torch.compile`` (Inductor).

    Args: those of ``TLSTMNaive``, plus ``mode``, passed to ``torch.compile`` (None: its default).
    """

    backend = "inductor"

    def __init__(self, *args, mode: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A new model is a new configuration: drop the compiled code and guards of earlier ones so
        # the recompile limit counts this model's shapes only.
        torch._dynamo.reset()
        self.mode = mode
        self._compiled_step = torch.compile(_naive_step, fullgraph=True, mode=mode)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend=inductor"

    def step(self, z: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        # Every guard difference is a separate compile (tens of seconds here). The input rows are
        # strided views of [B, T, M] and the padding row an expanded bias_x: make them contiguous.
        # The initial state needs no gradient while later states do: give it one (thrown away) so
        # that step 0 runs the same graph as the others.
        if torch.is_grad_enabled() and not h.requires_grad:
            h, c = h.detach().requires_grad_(), c.detach().requires_grad_()
        return self._compiled_step(self, z.contiguous(), h, c)


@register(
    "tlstm_compiled",
    family="tlstm",
    devices=("cpu", "cuda"),
    dtypes=(torch.float32, torch.float64),
    description="reference tLSTM with its step under torch.compile (Inductor)",
    style=("#9467bd", "D"),
)
def build_tlstm_compiled(config: ModelConfig, *, device: torch.device, dtype: torch.dtype) -> TLSTMCompiled:
    return TLSTMCompiled.from_config(config, device=device, dtype=dtype)
