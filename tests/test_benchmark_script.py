"""benchmarks/speed.py runs end to end (a tiny configuration: this checks that it works, it times nothing)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quotient_agrees(value: float, num: float, den: float, *, scale: float = 100.0, step: float = 0.1) -> bool:
    """``value`` (printed to ``step``) is ``scale * num / den`` for some num and den within their printed rounding
    (rates to 0.1 img/s): on a loaded machine a tiny run's rates are a few img/s, where rounding alone moves a
    ratio by percents."""
    lo, hi = scale * (num - 0.05) / (den + 0.05), scale * (num + 0.05) / (den - 0.05)
    return lo - step / 2 - 1e-9 <= value <= hi + step / 2 + 1e-9


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
        assert _quotient_agrees(ratio, fast, base, scale=1.0, step=0.01), (case, out)
        assert _quotient_agrees(share, fast, floor, step=1.0), (case, out)


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


def test_weightings_benchmark_rows_agree_with_their_rates(tiny_data: Path, cache_dir: Path):
    env = {**os.environ, "MTLBENCH_CACHE": str(cache_dir)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "weightings.py"), "--data", str(tiny_data), "--device", "cpu",
         "--img-size", "32", "--batch-size", "4", "--steps", "2", "--block", "1", "--warmup", "1",
         "--epoch-steps", "1", "--weightings", "EW,GradNorm,MoDo"],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    split = re.search(r"forward F = ([\d.]+) ms, backward B = ([\d.]+) ms \(B/F = ([\d.]+)\)", out)
    assert split, out
    fwd, bwd, ratio = (float(v) for v in split.groups())
    assert fwd > 0 and bwd > 0 and abs(ratio - bwd / fwd) <= 0.01 + 0.01 * ratio
    factor = (fwd + bwd) / (fwd + 2 * bwd)
    printed = float(re.search(r"k=2: ([\d.]+)", out).group(1))
    assert abs(printed - factor) < 2e-3
    num = r"([\d.]+)"
    rows = {m[0]: m[1:] for m in re.findall(
        rf"^(EW|GradNorm|MoDo)\s+{num}\s+{num}\s+{num}\s+{num}\s+{num}\s+(\d+)\s+([\d.]+|-)\s+([\d.]+|-)"
        rf"\s+{num}\s+{num}-\s*{num}$", out, re.M)}
    assert set(rows) == {"EW", "GradNorm", "MoDo"}, out
    for name, (rate, ew, pct_ew, floor, pct_floor, passes, limit, pct_limit, median, lo, hi) in rows.items():
        rate, ew, pct_ew, floor, pct_floor = map(float, (rate, ew, pct_ew, floor, pct_floor))
        assert min(rate, ew, floor) > 0
        assert _quotient_agrees(pct_ew, rate, ew) and _quotient_agrees(pct_floor, rate, floor), (name, out)
        # Two rounds of one step each: the median is their mean, within the range, and the ratio of the totals (a
        # weighted mean of the rounds' ratios) lies in that range too.
        median, lo, hi = float(median), float(lo), float(hi)
        assert lo <= median <= hi and abs(median - (lo + hi) / 2) <= 0.1 + 1e-9, (name, out)
        assert lo - 0.1 <= pct_ew <= hi + 0.1, (name, out)
        if name == "EW":
            assert passes == "1" and limit == pct_limit == "-"
        else:
            # GradNorm is timed past its first epoch, where it takes one gradient per task (epoch 0 runs EW); MoDo
            # takes three batches a step, two passes per batch.
            assert passes == "2", out
            lo, hi = (ew - 0.05) * factor, (ew + 0.05) * factor
            assert lo - 0.05 - 1e-3 * hi <= float(limit) <= hi + 0.05 + 1e-3 * hi, out
            assert _quotient_agrees(float(pct_limit), rate, float(limit)), out
    assert re.search(r"^in the same turns, EW ran at [\d.]+-[\d.]+ img/s and the floor at [\d.]+-[\d.]+ img/s$", out,
                     re.M)
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "weightings.py"), "--weightings", "EW,Nope"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert bad.returncode != 0 and "Nope" in bad.stderr
