"""The worker process: measures points one after another for the sweep runner (``bench.runner``).

Started by the runner as ``bench.worker PLUGINS_JSON BASE_DIR THREADS`` (through ``runpy``, with the current
directory off ``sys.path``: see ``bench.runner.WORKER_BOOT``). It speaks JSON lines: requests on stdin,
replies on the file descriptor that was stdout at start. Everything the measured code prints goes to
stderr (the runner's ``worker.log``), so nothing can corrupt the protocol.

Requests and replies:
    {"op": "env", "devices": [...], "dtypes": [...]}   -> {"op": "env", "env": {...}}
    {"op": "point", "config": {...}, "energy": bool, "min_time_s": float, "trace": path or null,
     "checkpoint": path or null (a training point saves and resumes its state there)}
        -> {"op": "result", "status", "message", "samples_s", "metrics"}
At start, once torch and the plugins are imported: {"op": "ready", "pid": ...}.

Out of memory, unavailable implementations and exceptions become replies; a crash (segfault,
abort) or a hang is the runner's to detect, since this process cannot report it.
"""

from __future__ import annotations

import errno
import gc
import json
import math
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from bench.contract import Point


def _watch_parent(parent_pid: int) -> None:
    # A runner killed with SIGKILL cannot stop us; stop ourselves rather than linger, perhaps hung.
    while True:
        if os.getppid() != parent_pid:
            os._exit(3)
        time.sleep(0.5)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: missing or undefined numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


# The message prefix of a point that failed because the disk is full; ``--resume`` runs such a point again.
DISK_FULL = "disk full"


def is_disk_full(exc: BaseException) -> bool:
    """No space left on the device: an OSError with ENOSPC, or torch's serializer failing on a short write."""
    text = str(exc)
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in text \
        or (isinstance(exc, RuntimeError) and "unexpected pos" in text)


def _short_error(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def measure_and_classify(point: Point, energy: bool, min_time_s: float = 0.0,
                         trace_path: str | None = None, checkpoint: str | None = None) -> dict[str, Any]:
    """Measure (time, or for a training point train) one point and classify the outcome (ok / incorrect /
    diverged / oom / unavailable / error)."""
    import torch

    import implementations
    from bench import measure

    result: dict[str, Any] = {"samples_s": [], "metrics": {}}
    try:
        reason = measure.unavailable_reason(point)
        if reason is not None:
            result.update(status="unavailable", message=reason)
        elif point.train is not None:
            from bench.train import train_point

            result.update(train_point(point, Path(checkpoint) if checkpoint else None))
        else:
            energy_window_s = measure.ENERGY_WINDOW_S if energy else None
            result.update(measure.measure_point(point, energy_window_s=energy_window_s, min_time_s=min_time_s,
                                                trace_path=Path(trace_path) if trace_path else None))
    except implementations.ImplementationUnavailable as exc:
        result.update(status="unavailable", message=str(exc))
    except Exception as exc:  # classified, reported, and the worker goes on with the next point
        if _is_oom(exc):
            result.update(status="oom", message=_short_error(exc))
        elif is_disk_full(exc):  # not the point's fault: --resume measures it again once there is space
            result.update(status="error", message=f"{DISK_FULL}: {_short_error(exc)}")
        else:
            result.update(status="error", message=_short_error(exc))
            try:
                print(traceback.format_exc(), file=sys.stderr, flush=True)
            except OSError:  # worker.log cannot be written (a full disk): the reply still says what happened
                pass
    finally:
        # Free this point's memory and compiled graphs before the next one: a compiled step reused
        # across shapes would hit dynamo's recompile limit and silently fall back to eager.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if "torch._dynamo" in sys.modules:
            torch._dynamo.reset()
    return result


def serve(requests: TextIO, replies: TextIO) -> None:
    from bench import measure

    def send(message: dict[str, Any]) -> None:
        replies.write(json.dumps(_finite(message)) + "\n")
        replies.flush()

    send({"op": "ready", "pid": os.getpid()})
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        if request["op"] == "env":
            send({"op": "env", "env": measure.environment(request["devices"], request["dtypes"])})
        elif request["op"] == "point":
            point = Point.from_dict(request["config"])
            try:
                print(f"--- point {point.describe()}", file=sys.stderr, flush=True)
            except OSError:  # worker.log cannot be written (a full disk): measure all the same
                pass
            send({"op": "result", **measure_and_classify(point, request.get("energy", True),
                                                         request.get("min_time_s", 0.0), request.get("trace"),
                                                         request.get("checkpoint"))})
        elif request["op"] == "exit":
            return
        else:
            raise ValueError(f"unknown request {request['op']!r}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    plugins = json.loads(argv[0]) if argv else []
    base_dir = Path(argv[1]) if len(argv) > 1 and argv[1] else None
    threads = int(argv[2]) if len(argv) > 2 else 0
    # The protocol keeps the original stdout; fd 1 becomes stderr so prints cannot interleave with it.
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    import torch

    import implementations  # noqa: F401  (registers the built-in implementations)
    from bench.plugins import import_plugins

    if threads > 0:
        torch.set_num_threads(threads)

    import_plugins(plugins, base_dir)
    _preload()
    serve(sys.stdin, replies)


def _preload() -> None:
    """Pay the one-time costs (lazy imports of dynamo and autograd, oneDNN setup) before ``ready``,
    so that they do not count against the first point's timeout or timing."""
    import torch
    import torch._dynamo  # noqa: F401  (imported lazily by dispatch modes and torch.compile: seconds)

    lstm = torch.nn.LSTM(2, 2, batch_first=True)
    y, _ = lstm(torch.randn(1, 2, 2))
    y.sum().backward()


if __name__ == "__main__":
    main()
