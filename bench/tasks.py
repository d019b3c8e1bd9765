"""The paper's algorithmic tasks, generated in code: what the capacity sweeps train on.

Nothing is downloaded; every sample comes from a seeded ``torch.Generator``. One sample is a sequence
of input symbols (one per step), a target symbol per step and a mask of the steps that are scored.

    from bench.tasks import make_task
    task = make_task("addition", digits=3)
    inputs, targets, mask = task.batch(4, seed=0)        # each [4, task.seq_len]
    print(task.render(inputs[0], targets[0], mask[0]))   # "123+045+___ -> 0168"

Encodings (input symbol ids; targets are output symbol ids):

- **addition** (digits D): inputs 0-9 are the digits, 10 the delimiter "+", 11 the blank "_". A sample is
  the D digits of a, "+", the D digits of b, "+", then D+1 blanks: T = 3D + 3 steps. The targets of the
  last D+1 steps are the D+1 digits of a + b, most significant first (output ids 0-9); only they are
  scored. a and b are uniform over 0 .. 10^D - 1 (leading zeros allowed).
- **memorization** (length S, alphabet V): inputs 0..V-1 are the symbols, V the delimiter, V+1 the blank.
  A sample is S random symbols, the delimiter, then S blanks: T = 2S + 1 steps. The targets of the last
  S steps are the S symbols in order (output ids 0..V-1); only they are scored.

Unscored steps have target 0 and mask False.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TASKS = ("addition", "memorization")
# The limits keep a typo from asking for sequences no one can train on (and from int64 overflow in
# addition: 10^D must fit, so D <= 18).
DIGITS_RANGE = (1, 18)
LENGTH_RANGE = (1, 10_000)
ALPHABET_RANGE = (2, 10_000)


class TaskError(ValueError):
    """A task or one of its sizes is invalid; the message names the field and the allowed values."""


def _check(field: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TaskError(f"{field} must be an integer >= {lo} and <= {hi}, got {value!r}")
    return value


@dataclass(frozen=True)
class Task:
    """One task at fixed sizes. ``digits`` for addition; ``length`` and ``alphabet`` for memorization."""

    name: str
    digits: int | None = None
    length: int | None = None
    alphabet: int | None = None

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise TaskError(f"task must be one of {', '.join(TASKS)}; got {self.name!r}")
        if self.name == "addition":
            _check("digits", self.digits, *DIGITS_RANGE)
            if self.length is not None or self.alphabet is not None:
                raise TaskError("addition takes digits only; length and alphabet are for memorization")
        else:
            _check("length", self.length, *LENGTH_RANGE)
            _check("alphabet", self.alphabet, *ALPHABET_RANGE)
            if self.digits is not None:
                raise TaskError("memorization takes length and alphabet; digits is for addition")

    @property
    def input_symbols(self) -> int:
        """Distinct input symbols (the one-hot width R the model reads)."""
        return 12 if self.name == "addition" else self.alphabet + 2  # type: ignore[operator]

    @property
    def output_symbols(self) -> int:
        """Distinct target symbols (the read-out's width)."""
        return 10 if self.name == "addition" else self.alphabet  # type: ignore[return-value]

    @property
    def seq_len(self) -> int:
        """T, steps per sample."""
        if self.name == "addition":
            return 3 * self.digits + 3  # type: ignore[operator]
        return 2 * self.length + 1  # type: ignore[operator]

    @property
    def scored_steps(self) -> int:
        """Steps per sample whose targets are scored."""
        return self.digits + 1 if self.name == "addition" else self.length  # type: ignore[operator]

    def label(self) -> str:
        return f"addition D={self.digits}" if self.name == "addition" else \
            f"memorization S={self.length} V={self.alphabet}"

    def batch(self, n: int, seed: int | None = None, generator: torch.Generator | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` samples: (inputs [n, T] int64 input ids, targets [n, T] int64 output ids, mask [n, T] bool).

        Drawn from ``generator`` (which advances) or, given ``seed``, from a fresh generator seeded with it.
        """
        _check("n", n, 1, 1 << 24)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        if self.name == "addition":
            return self._addition(n, generator)
        return self._memorization(n, generator)

    def _addition(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.digits
        assert d is not None
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

    def _memorization(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s, v = self.length, self.alphabet
        assert s is not None and v is not None
        symbols = torch.randint(0, v, (n, s), generator=generator)
        inputs = torch.cat([symbols, torch.full((n, 1), v), torch.full((n, s), v + 1)], dim=1)
        targets = torch.zeros_like(inputs)
        targets[:, -s:] = symbols
        mask = torch.zeros_like(inputs, dtype=torch.bool)
        mask[:, -s:] = True
        return inputs, targets, mask

    def render(self, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> str:
        """One sample as text: its inputs, " -> ", its scored targets."""
        if self.name == "addition":
            names = [*"0123456789", "+", "_"]
            return "".join(names[i] for i in inputs.tolist()) + " -> " + \
                "".join(str(t) for t in targets[mask].tolist())
        v = self.alphabet
        names = [str(i) for i in range(v)] + ["|", "_"]  # type: ignore[arg-type]
        return " ".join(names[i] for i in inputs.tolist()) + " -> " + " ".join(str(t) for t in targets[mask].tolist())


def make_task(name: str, *, digits: int | None = None, length: int | None = None,
              alphabet: int | None = None) -> Task:
    """The task ``name`` at these sizes (``TaskError`` naming the field when one is invalid)."""
    return Task(name, digits, length, alphabet)


def batch(name: str, n: int, seed: int = 0, **sizes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` samples of task ``name``: (inputs, targets, mask), each [n, T]; see the module docstring."""
    return make_task(name, **sizes).batch(n, seed=seed)
