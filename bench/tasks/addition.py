"""Addition of two D-digit numbers (the paper's addition task).

Encoding: inputs 0-9 are the digits, 10 the delimiter "+", 11 the blank "_". A sample is the D digits of
a, "+", the D digits of b, "+", then D+1 blanks: T = 3D + 3 steps. The targets of the last D+1 steps are
the D+1 digits of a + b, most significant first (output ids 0-9); only they are scored. a and b are
uniform over 0 .. 10^D - 1 (leading zeros allowed). D <= 18 keeps 10^D within int64.
"""

from __future__ import annotations

from typing import Any

from . import Task, task


@task("addition", sizes={"digits": ("D", 1, 18)})
class Addition(Task):
    input_symbols = property(lambda self: 12)
    output_symbols = property(lambda self: 10)
    seq_len = property(lambda self: 3 * self.digits + 3)
    scored_steps = property(lambda self: self.digits + 1)
    separator = ""

    def symbol_names(self) -> list[str]:
        return [*"0123456789", "+", "_"]

    def generate(self, n: int, generator: Any) -> tuple[Any, Any, Any]:
        import torch

        d = self.digits
        digits_a = torch.randint(0, 10, (n, d), generator=generator)
        digits_b = torch.randint(0, 10, (n, d), generator=generator)
        powers = 10 ** torch.arange(d - 1, -1, -1)  # most significant first
        total = (digits_a * powers).sum(1) + (digits_b * powers).sum(1)  # [n], < 2 * 10^D
        sum_powers = 10 ** torch.arange(d, -1, -1)  # D+1 digits
        sum_digits = (total[:, None] // sum_powers) % 10  # [n, D+1]
        delimiter = torch.full((n, 1), 10)
        blanks = torch.full((n, d + 1), 11)
        inputs = torch.cat([digits_a, delimiter, digits_b, delimiter, blanks], dim=1)
        targets = torch.zeros_like(inputs)
        targets[:, -(d + 1):] = sum_digits
        mask = torch.zeros_like(inputs, dtype=torch.bool)
        mask[:, -(d + 1):] = True
        return inputs, targets, mask
