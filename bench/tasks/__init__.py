"""The training tasks, registered like implementations: what the capacity sweeps train on.

A task is one file in this package with a class decorated by :func:`task`, which gives its name and its
sizes (each with a letter for labels and a range). The sweep's ``[train]`` table, the points' train
settings (``bench.contract.TrainSpec``), the report's labels and the CLI all read this registry, so a
new task is that one file (imported at the bottom of this module, or by a sweep's plugin)::

    @task("copy", sizes={"length": ("S", 1, 1000)})
    class Copy(Task):
        '''Encoding: ...'''
        input_symbols = property(lambda self: ...)
        ...
        def generate(self, n, generator): ...      # (inputs, targets, mask), each [n, T]

Nothing is downloaded; every sample comes from a seeded ``torch.Generator``. One sample is a sequence of
input symbols (one per step), a target symbol per step and a mask of the steps that are scored;
unscored steps have target 0 and mask False.

    from bench.tasks import make_task
    t = make_task("addition", digits=3)
    inputs, targets, mask = t.batch(4, seed=0)          # each [4, t.seq_len]
    print(t.render(inputs[0], targets[0], mask[0]))     # "123+045+____ -> 0168"

Importing this package does not import torch (the report reads the labels); generating does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TaskError(ValueError):
    """A task or one of its sizes is invalid; the message names the field (also ``field``) and the allowed
    values."""

    def __init__(self, message: str, field: str = "task") -> None:
        super().__init__(message)
        self.field = field


# name -> the task's class; each class carries NAME and SIZES {size: (letter, min, max)}
TASKS: dict[str, type[Task]] = {}


def task(name: str, *, sizes: dict[str, tuple[str, int, int]]) -> Callable[[type[Task]], type[Task]]:
    """Class decorator that registers a task under ``name`` with its sizes: size -> (letter, min, max)."""

    def decorator(cls: type[Task]) -> type[Task]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        cls.NAME, cls.SIZES = name, dict(sizes)
        TASKS[name] = cls
        return cls

    return decorator


def unregister(name: str) -> None:
    """Remove a registration (for tests that register toy tasks)."""
    TASKS.pop(name, None)


def _check(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TaskError(f"{field} must be an integer >= {lo} and <= {hi:,}, got {value!r}", field)
    return value


def size_names() -> tuple[str, ...]:
    """Every registered task's size names (each once, in registration order)."""
    return tuple(dict.fromkeys(size for cls in TASKS.values() for size in cls.SIZES))


class Task:
    """One task at fixed sizes (``task.sizes``; each also an attribute: ``task.digits``)."""

    NAME: str = ""
    SIZES: dict[str, tuple[str, int, int]] = {}
    separator = " "  # between symbols in ``render``

    def __init__(self, **sizes: Any) -> None:
        for size, (_, lo, hi) in self.SIZES.items():
            if sizes.get(size) is None:
                raise TaskError(f"{size} is required by task {self.NAME!r} (an integer from {lo} to {hi:,})", size)
            _check(size, sizes[size], lo, hi)
        unknown = sorted(set(sizes) - set(self.SIZES))
        if unknown:
            raise TaskError(f"{unknown[0]} is not a size of task {self.NAME!r}; it takes "
                            f"{' and '.join(self.SIZES) or 'no sizes'}", unknown[0])
        self.sizes = {size: sizes[size] for size in self.SIZES}

    def __getattr__(self, name: str) -> Any:
        sizes = self.__dict__.get("sizes", {})
        if name in sizes:
            return sizes[name]
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and (self.NAME, self.sizes) == (other.NAME, other.sizes)

    def __hash__(self) -> int:
        return hash((self.NAME, tuple(self.sizes.items())))

    def __repr__(self) -> str:
        return f"make_task({self.NAME!r}, " + ", ".join(f"{k}={v}" for k, v in self.sizes.items()) + ")"

    @property
    def name(self) -> str:
        return self.NAME

    # what each task defines
    @property
    def input_symbols(self) -> int:
        """Distinct input symbols (the one-hot width R the model reads)."""
        raise NotImplementedError

    @property
    def output_symbols(self) -> int:
        """Distinct target symbols (the read-out's width)."""
        raise NotImplementedError

    @property
    def seq_len(self) -> int:
        """T, steps per sample."""
        raise NotImplementedError

    @property
    def scored_steps(self) -> int:
        """Steps per sample whose targets are scored."""
        raise NotImplementedError

    def symbol_names(self) -> list[str]:
        """One printable name per input symbol id (for ``render``)."""
        return [str(i) for i in range(self.input_symbols)]

    def generate(self, n: int, generator: Any) -> tuple[Any, Any, Any]:
        """``n`` samples from ``generator``: (inputs [n, T] int64, targets [n, T] int64, mask [n, T] bool)."""
        raise NotImplementedError

    # derived, the same for every task
    def label(self) -> str:
        """'addition D=3', 'memorization S=8 V=4'."""
        return " ".join([self.NAME] + [f"{letter}={self.sizes[size]}" for size, (letter, _, _) in self.SIZES.items()])

    def head_params(self, width: int) -> int:
        """Parameters of the task head (``bench.train.TaskModel``): a linear read-out M -> output symbols.
        The input is one-hot, read by the core, so the head has no input weights."""
        return self.output_symbols * (width + 1)

    def batch(self, n: int, seed: int | None = None, generator: Any = None) -> tuple[Any, Any, Any]:
        """``n`` samples: (inputs [n, T] int64 input ids, targets [n, T] int64 output ids, mask [n, T] bool).

        Drawn from ``generator`` (which advances) or, given ``seed``, from a fresh generator seeded with it.
        """
        import torch

        _check("n", n, 1, 1 << 24)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        return self.generate(n, generator)

    def render(self, inputs: Any, targets: Any, mask: Any) -> str:
        """One sample as text: its inputs, " -> ", its scored targets."""
        names = self.symbol_names()
        return self.separator.join(names[i] for i in inputs.tolist()) + " -> " + \
            self.separator.join(str(t) for t in targets[mask].tolist())


def make_task(name: str, **sizes: Any) -> Task:
    """The task ``name`` at these sizes (sizes given as None are left out); ``TaskError`` names the field
    when one is invalid."""
    if name not in TASKS:
        raise TaskError(f"task must be one of {', '.join(TASKS)}; got {name!r}")
    return TASKS[name](**{k: v for k, v in sizes.items() if v is not None})


def from_train(train: dict[str, Any]) -> Task:
    """The task of a point's train settings (a TrainSpec as a dict)."""
    return make_task(train["task"], **{k: train.get(k) for k in TASKS[train["task"]].SIZES}) \
        if train.get("task") in TASKS else make_task(str(train.get("task")))


def task_label(train: dict[str, Any]) -> str:
    """The label of a training point's task from its train settings: 'memorization S=8 V=4'. A task not
    registered here (a plugin's) is labelled by its name and whatever sizes it recorded."""
    cls = TASKS.get(train.get("task"))  # type: ignore[arg-type]
    if cls is None:
        return " ".join([str(train.get("task"))] + [f"{k}={v}" for k, v in sorted(train.items())
                                                     if k in size_names() and v is not None])
    return " ".join([cls.NAME] + [f"{letter}={train.get(size)}" for size, (letter, _, _) in cls.SIZES.items()])


def batch(name: str, n: int, seed: int = 0, **sizes: Any) -> tuple[Any, Any, Any]:
    """``n`` samples of task ``name``: (inputs, targets, mask), each [n, T]; see the module docstring."""
    return make_task(name, **sizes).batch(n, seed=seed)


# The built-in tasks: importing a module registers what it defines.
from . import addition, memorization  # noqa: E402,F401  isort: skip
