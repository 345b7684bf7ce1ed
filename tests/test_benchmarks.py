"""Smoke tests for the benchmark scripts: they run, and their JSON has the promised shape.

No timing assertions: these run on shared, noisy machines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--batch", "2", "--width", "2", "--image", "8", "--reps", "3", "--warmup", "1"]


def _run(script: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _last_json(stdout: str) -> dict:
    last = stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert isinstance(result, dict)
    return result


def test_step_overhead_json_has_the_required_keys():
    proc = _run("step_overhead.py", *TINY, "--json")
    assert proc.returncode == 0, proc.stderr
    result = _last_json(proc.stdout)
    assert result["device"].startswith("cpu")
    rows = {"training", "blending", "fossilized", "telemetry_stride1", "telemetry_stride10"}
    assert set(result["ratios"]) == rows
    assert all(isinstance(v, float) and v > 0 for v in result["ratios"].values())
    assert set(result["medians"]) == rows
    assert {"static_ms", "morph_ms"} <= set(result["medians"]["training"])
    assert {"plain_ms", "telemetry_ms"} <= set(result["medians"]["telemetry_stride10"])
    assert result["config"]["batch"] == 2


def test_step_overhead_rejects_bad_sizes():
    proc = _run("step_overhead.py", "--batch", "0")
    assert proc.returncode != 0
    assert "--batch must be >= 1" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_check_says_clearly_when_cuda_is_missing():
    proc = _run("gpu_check.py", "--skip", "timing")
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr
    assert "--dry-run" in proc.stderr


def test_gpu_check_dry_run_reports_a_lifecycle():
    proc = _run("gpu_check.py", "--dry-run", "--skip", "timing", "--skip", "sync", "--json")
    assert proc.returncode in (0, 1), proc.stderr  # 1 = a check failed; the report still stands
    result = _last_json(proc.stdout)
    rec = result["recompiles"]
    phases = [p["phase"] for p in rec["phases"]]
    assert phases[:3] == ["DORMANT", "GERMINATED", "TRAINING"]
    assert any(p.startswith("BLENDING epoch 2") for p in phases)
    assert "PROBATIONARY" in phases and phases[-1].startswith("FOSSILIZED")
    for key in ("alpha_ramp_recompiles", "total_graphs", "compiled_follows_lifecycle", "ok"):
        assert key in rec
