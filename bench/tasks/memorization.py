"""Memorization of S symbols from an alphabet of V (the paper's memorization task).

Encoding: inputs 0..V-1 are the symbols, V the delimiter, V+1 the blank. A sample is S random symbols,
the delimiter, then S blanks: T = 2S + 1 steps. The targets of the last S steps are the S symbols in
order (output ids 0..V-1); only they are scored.
"""

from __future__ import annotations

from typing import Any

from . import Task, task


@task("memorization", sizes={"length": ("S", 1, 10_000), "alphabet": ("V", 2, 10_000)})
class Memorization(Task):
    input_symbols = property(lambda self: self.alphabet + 2)
    output_symbols = property(lambda self: self.alphabet)
    seq_len = property(lambda self: 2 * self.length + 1)
    scored_steps = property(lambda self: self.length)

    def symbol_names(self) -> list[str]:
        return [str(i) for i in range(self.alphabet)] + ["|", "_"]

    def generate(self, n: int, generator: Any) -> tuple[Any, Any, Any]:
        import torch

        s, v = self.length, self.alphabet
        symbols = torch.randint(0, v, (n, s), generator=generator)
        inputs = torch.cat([symbols, torch.full((n, 1), v), torch.full((n, s), v + 1)], dim=1)
        targets = torch.zeros_like(inputs)
        targets[:, -s:] = symbols
        mask = torch.zeros_like(inputs, dtype=torch.bool)
        mask[:, -s:] = True
        return inputs, targets, mask
