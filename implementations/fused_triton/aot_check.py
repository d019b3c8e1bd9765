"""Compile the Triton kernels for a GPU on a machine without one (ahead of time, to a cubin).

    python -m implementations.fused_triton.aot_check [--quick] [--arch 90]

The interpreter checks what the kernels compute; it does not check that they compile for a GPU
(type rules, constexpr globals, shared memory). Triton's compiler and ptxas run without a device,
so this does: it compiles the persistent forward, the per-step forward and the backward for
float32 and bfloat16 storage, with and without the memory-cell convolution and CN, at the tile sizes
a GPU run chooses for M = 64, and prints each kernel's shared memory. It takes minutes (about
10-100 s per kernel on a 2-core machine), so the test suite runs it only when asked
(``TLSTM_TRITON_AOT=1``). Must run without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# H100/H200: 227 KB of shared memory per block at most
SHARED_LIMIT_BYTES = 227 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compile the fused tLSTM Triton kernels for a GPU, without one")
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 (H100), 80 (A100)")
    parser.add_argument("--quick", action="store_true", help="one configuration (bfloat16, memory-cell convolution)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: under the interpreter nothing is compiled")

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import kernels
    from .ops import LAUNCH_OPTIONS

    target = GPUTarget("cuda", args.arch, 32)
    storage = {"float32": (tl.float32, "ieee", "*fp32"), "bfloat16": (tl.bfloat16, None, "*bf16")}
    # pointers in the storage dtype; everything else (c, a, dy, scratch, CN parameters) is float32
    storage_ptrs = {"z_ptr", "h_ptr", "y_ptr", "w_ptr", "bh_ptr"}
    configs = [("bfloat16", True, False)] if args.quick else [
        (dtype, mem_conv, cn) for dtype in ("float32", "bfloat16") for mem_conv, cn in ((True, False), (False, True))
    ]
    failures = 0
    for dtype, mem_conv, cn in configs:
        dot_dtype, precision, ptr_type = storage[dtype]
        common = dict(K=3, TAPS=3, DIMS=2, D_UP=1, MEM_CONV=mem_conv, CN=cn, DOT_DTYPE=dot_dtype,
                      DOT_PRECISION=precision,
                      BB=16, BN=64, KQ=16)
        for fn, consts in (
            (kernels.tlstm_fwd_persistent_kernel, common | dict(SAVE=True, BK=64)),
            (kernels.tlstm_fwd_step_kernel, common | dict(SAVE=True, BK=64)),
            (kernels.tlstm_bwd_kernel, common | dict(BK=64)),
        ):
            signature = {
                name: "constexpr" if name in consts else
                (ptr_type if name in storage_ptrs else "*fp32") if name.endswith("_ptr") else "i32"
                for name in fn.arg_names
            }
            label = f"{fn.__name__} {dtype} mem_conv={mem_conv} cn={cn}"
            start = time.perf_counter()
            try:
                compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts), target=target,
                                          options=dict(LAUNCH_OPTIONS))
            except Exception as error:  # report every failing kernel, not only the first
                failures += 1
                print(f"FAIL {label}: {error}", flush=True)
                continue
            shared = compiled.metadata.shared
            status = "ok" if shared <= SHARED_LIMIT_BYTES else "FAIL (shared memory over the limit)"
            failures += status != "ok"
            print(f"{status} {label}: shared {shared} B, {time.perf_counter() - start:.0f} s", flush=True)
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
