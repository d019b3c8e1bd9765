"""Fake tLSTM implementations for the sweep tests: each fails in one way a real one might.

Imported as a sweep plugin (``plugins = ["tests.fake_impls"]`` or its path), so the CLI and every
worker process register them; nothing else imports this module.

| name             | behaviour                                  | expected status |
|------------------|--------------------------------------------|-----------------|
| fake_ok          | tlstm_naive itself                         | ok              |
| fake_slow        | tlstm_naive after a short sleep per call   | ok              |
| fake_oom         | raises torch.OutOfMemoryError              | oom             |
| fake_abort       | calls os.abort() (SIGABRT)                 | crashed         |
| fake_hang        | sleeps far past any timeout                | timeout         |
| fake_wrong       | output shifted by 0.1                      | incorrect       |
| fake_error       | raises ValueError                          | error           |
| fake_unavailable | availability says no                       | unavailable     |
| fake_nan         | correct for 4 calls, then NaN outputs      | ok when timed; diverged when trained |
"""

from __future__ import annotations

import os
import time

import torch
from torch import Tensor

import implementations
from implementations.tlstm_naive import TLSTMNaive

SLOW_CALL_S = 0.05
NAN_AFTER_CALLS = 4


class FakeTLSTM(TLSTMNaive):
    """``TLSTMNaive`` with a failure injected into ``forward``."""

    behaviour = "ok"

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None):
        if self.behaviour == "oom":
            raise torch.OutOfMemoryError("fake: CUDA out of memory. Tried to allocate 1.00 TiB")
        if self.behaviour == "abort":
            os.abort()
        if self.behaviour == "hang":
            time.sleep(3600)
        if self.behaviour == "error":
            raise ValueError("fake: the kernel rejected its arguments")
        if self.behaviour == "slow":
            time.sleep(SLOW_CALL_S)
        y, (h, c) = super().forward(x, state)
        if self.behaviour == "wrong":
            y = y + 0.1
        if self.behaviour == "nan":
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls > NAN_AFTER_CALLS:
                y = y * float("nan")
        return y, (h, c)


def _register(behaviour: str, availability=None) -> None:
    def build(config, *, device, dtype):
        model = FakeTLSTM(config.input_size, config.channels, config.tensor_size, config.kernel_size,
                          config.mem_conv, config.norm, device=device, dtype=dtype)
        model.behaviour = behaviour
        return model

    implementations.register(
        f"fake_{behaviour}", family="tlstm", devices=("cpu",), dtypes=(torch.float32, torch.float64),
        description=f"test fake: {behaviour}", availability=availability,
    )(build)


for _behaviour in ("ok", "slow", "oom", "abort", "hang", "wrong", "error", "nan"):
    _register(_behaviour)
_register("unavailable", availability=lambda device: "fake: needs hardware this machine lacks")

NAMES = [f"fake_{b}" for b in ("ok", "slow", "oom", "abort", "hang", "wrong", "error", "unavailable")]
