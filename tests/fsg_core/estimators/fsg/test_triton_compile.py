"""The Triton kernels compile for a Hopper GPU (sm_90) without one: what the interpreter cannot check.

Triton's interpreter runs the kernels in NumPy and accepts code the compiler refuses (types, shapes,
loops); compiling ahead of time through ptxas, which ships inside the triton wheel, catches those
here, in CI, where no GPU is.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed")

COMPILE = """
import inspect, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fsg_core.estimators.fsg.kernels import triton_ssm as m

INT_POINTERS = {"order_ptr", "blk_layer_ptr", "blk_start_ptr", "blk_end_ptr"}
k, s = int(sys.argv[1]), int(sys.argv[2])
consts = {"K": k, "S": s, "DCONV": 8, "BLOCK": m.block_size(k, s), "KP": triton.next_power_of_2(k),
          "SP": triton.next_power_of_2(s)}
for kernel in (m._forward_kernel, m._backward_kernel):
    names = list(inspect.signature(kernel.fn).parameters)
    sig = {n: "constexpr" if n in consts else ("*i64" if n in INT_POINTERS else "*fp32") if n.endswith("_ptr")
           else "i32" for n in names}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    assert compiled.asm.get("cubin"), "no machine code"
    print(kernel.fn.__name__, "ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("k,d_state", [(5, 4), (2, 16)])  # lite with a full history; paper-size state in warm-up
def test_triton_kernels_compile_for_sm90(k: int, d_state: int) -> None:
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", COMPILE, str(k), str(d_state)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["_forward_kernel", "ok", "_backward_kernel", "ok"]
