"""The Triton kernel, run by Triton's CPU interpreter, against the pure-torch reference.

One subprocess (TRITON_INTERPRET=1 must be set before triton is imported) runs every case and
saves outputs; each test compares one case here. Skipped when triton is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from support import REPO

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)

# (M, K, N): M=1 decode, sizes that are not multiples of any block (16/32/64/128/256), several
# M blocks (M > 128), K longer than one K block
SHAPES = [(1, 64, 48), (5, 100, 37), (17, 300, 130), (70, 96, 200), (130, 40, 24)]
# per dtype: both sides accumulate in fp32, so the difference is the final rounding. The interpreter
# truncates fp32 -> bf16 where the GPU rounds to nearest, hence one bf16 ulp (2**-7 relative).
TOLERANCE = {
    "float32": dict(rtol=1e-5, atol=1e-4),  # outputs ~10: summation order differs
    "float16": dict(rtol=2**-10, atol=1e-3),
    "bfloat16": dict(rtol=2**-7, atol=1e-2),
}


def _case(dtype: str, m: int, k: int, n: int, bias: bool, variant: str = "plain") -> dict:
    return {"id": f"{dtype}-{m}x{k}x{n}-{'bias' if bias else 'nobias'}-{variant}",
            "dtype": dtype, "M": m, "K": k, "N": n, "bias": bias, "variant": variant}


CASES = [_case(d, m, k, n, b) for d in TOLERANCE for (m, k, n) in SHAPES for b in (False, True)] + [
    _case("float16", 7, 50, 33, True, "strided_x"),
    _case("bfloat16", 3, 64, 20, False, "batched_3d"),
    _case("float32", 33, 80, 50, True, "small_tiles"),
    _case("float16", 40, 100, 70, False, "small_tiles"),
]


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("interpret") / "results.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "kernels" / "interpret_cases.py"), json.dumps(CASES), str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stderr[-4000:]}"
    return torch.load(out)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_kernel_matches_reference(interpreted, case):
    result = interpreted["cases"][case["id"]]
    got, want = result["got"], result["want"]
    assert got.dtype == want.dtype == getattr(torch, case["dtype"])
    assert got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), **TOLERANCE[case["dtype"]])


def test_auto_dispatch_uses_triton_when_interpreting(interpreted):
    assert interpreted["backend_auto_on_cpu"] == "triton"


def test_gpu_check_code_runs(interpreted):
    """A dry run of kernels.gpu_check on CPU: the script that only a GPU machine runs has no typos."""
    report = json.loads(interpreted["gpu_check_dry_run"])  # JSON-able, as loadtests/gpu_check.py prints it
    assert report["ok"], report
    assert len(report["cases"]) == 5 and all("ms_triton" in c for c in report["cases"])
    assert all("error" not in row for row in report["decode_config_sweep"]), report["decode_config_sweep"]
