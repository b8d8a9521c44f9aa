"""benchmarks/speed.py runs end to end (a tiny configuration: this checks that it works, it times nothing)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_speed_benchmark_prints_every_case(tiny_data: Path, cache_dir: Path):
    env = {**os.environ, "MTLBENCH_CACHE": str(cache_dir)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--data", str(tiny_data), "--device", "cpu",
         "--img-size", "32", "--batch-size", "4", "--steps", "2", "--block", "1", "--workers", "0"],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert re.search(r"decoded data set: [\d.]+ MiB as uint8", out)
    for case in ("HPS+EW", "HPS+PCGrad", "MTAN+EW", "FastCAR"):
        row = re.search(rf"^{re.escape(case)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)\s+(\d+)%$", out, re.M)
        assert row, f"no row for {case}:\n{out}"
        base, fast, ratio, floor, share = (float(v) for v in row.groups())
        assert base > 0 and fast > 0 and floor > 0
        assert abs(ratio - fast / base) < 0.01 + 0.01 * ratio and abs(share - 100 * fast / floor) <= 1


def test_floor_benchmark_prints_every_variant():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "floor.py"), "--device", "cpu", "--img-size", "32",
         "--batch-size", "2", "--steps", "2", "--block", "1", "--variants", "fp32,channels_last,bf16"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = dict(re.findall(r"^(fp32|channels_last|bf16)\s+[\d.]+\s+([\d.]+)x$", proc.stdout, re.M))
    assert set(rows) == {"fp32", "channels_last", "bf16"}, proc.stdout
    assert rows["fp32"] == "1.00"
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "floor.py"), "--variants", "fp32,fp8"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert bad.returncode != 0 and "fp8" in bad.stderr
