#!/usr/bin/env bash
# One-shot GPU check for issue 13, for a lent machine that runs a single command in a copy of this repository,
# with no network: torch, torchvision, numpy, scipy, pandas, pyarrow, matplotlib, seaborn, typer, rich, pillow and
# pytest already installed, everything else as wheels in .whl/ (carried along; see the report of the kit).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine; logs go to $OUT (default /tmp/gpu-check)
#
# It installs the wheels into /tmp/site, prints the GPU and the versions, writes a synthetic data set of the steel
# set's size (3240 / 648 / 648 images, 6 classes, 224 px) in parallel shards listed by one CSV table, then runs,
# each step under a timeout cut to what is left of GC_BUDGET seconds:
#   1. benchmarks/speed.py        mtlbench against the LibMTL-style baseline and the floor
#   2. benchmarks/weightings.py   every weighting against EW and the floor
#   3. mtlbench fastcar           the paper's 100 epochs
#   4. mtlbench sweep             a 6-cell slice (HPS, MTAN x EW, PCGrad, IMTL), --workers-per-gpu 1, 2 and 4
# Logs (few files come back): env.log, speed.log, weightings.log, fastcar.log, sweep.log, gpu-util.log, summary.log.
#
# Every size is an environment variable, so that the whole script can be dry-run on a CPU in minutes, e.g.
#   GC_DEVICE=cpu GC_IMG=32 GC_PER_CLASS=8,2,2 GC_FAST= GC_STEPS=1 GC_BLOCK=1 GC_SPEED_STEPS=1 \
#   GC_FASTCAR_EPOCHS=1 GC_SWEEP_EPOCHS=1 GC_SWEEP_MAX_STEPS=2 OUT=/tmp/gpu-dry bash benchmarks/gpu_check.sh
# The wheel install is skipped when python3 runs in a virtual environment (GC_INSTALL=1 forces it).
set -uo pipefail   # no -e: a failing step is logged and the next one still runs

cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-/tmp/gpu-check}
GC_BUDGET=${GC_BUDGET:-500}              # seconds for the whole script
GC_DEVICE=${GC_DEVICE:-cuda}
GC_IMG=${GC_IMG:-224}
GC_BATCH=${GC_BATCH:-32}
GC_PER_CLASS=${GC_PER_CLASS:-540,108,108} # x 6 classes = the steel set's 3240 / 648 / 648
GC_SHARDS=${GC_SHARDS:-$(nproc)}         # data-generation processes
GC_FAST=${GC_FAST---amp --channels-last} # set empty for a float32, contiguous run
GC_SPEED_STEPS=${GC_SPEED_STEPS:-60}     # speed.py: timed steps per case
GC_SPEED_CASES=${GC_SPEED_CASES:-HPS+EW,HPS+PCGrad,MTAN+EW,FastCAR}
GC_STEPS=${GC_STEPS:-30}                 # weightings.py: timed steps per lane
GC_BLOCK=${GC_BLOCK:-10}                 # steps per turn, both benchmarks
GC_WEIGHTINGS=${GC_WEIGHTINGS:-}         # empty: every registered weighting
GC_FASTCAR_EPOCHS=${GC_FASTCAR_EPOCHS:-100}
GC_SWEEP_EPOCHS=${GC_SWEEP_EPOCHS:-2}
GC_SWEEP_MAX_STEPS=${GC_SWEEP_MAX_STEPS:-}   # empty: whole epochs
GC_WPG=${GC_WPG:-1 2 4}
GC_WHEELS=${GC_WHEELS:-.whl}
GC_WORK=${GC_WORK:-/tmp/gc}
# per-step caps in seconds (each further cut to what the budget has left)
GC_T_SPEED=${GC_T_SPEED:-70}
GC_T_WEIGHTINGS=${GC_T_WEIGHTINGS:-90}
GC_T_FASTCAR=${GC_T_FASTCAR:-150}
GC_T_SWEEP=${GC_T_SWEEP:-50}             # per --workers-per-gpu setting

mkdir -p "$OUT" "$GC_WORK"
START=$SECONDS
SUMMARY=$OUT/summary.log
export MTLBENCH_CACHE=$GC_WORK/cache PYTHONUNBUFFERED=1 COLUMNS=140
# as the Makefile: keep freed large blocks (per-task gradient vectors) in the process
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
read -r -a FAST <<< "$GC_FAST"

note() { echo "$(date +%T) +$((SECONDS - START))s $*" | tee -a "$SUMMARY"; }

# step NAME CAP LOG CMD...: run CMD under `time` and a timeout of min(CAP, what is left), appending to LOG.
# SIGINT first: Python unwinds (a progress bar prints its last state), SIGKILL 10 s later.
step() {
    local name=$1 cap=$2 log=$3 rc
    shift 3
    local left=$((GC_BUDGET - (SECONDS - START) - 5))
    ((cap > left)) && cap=$left
    if ((cap < 10)); then
        note "[$name] skipped: $left s of the budget left"
        echo "[$name] skipped: out of budget" >> "$log"
        return
    fi
    note "[$name] start (timeout ${cap}s): $*"
    echo "### $name: $* (timeout ${cap}s)" >> "$log"
    local TIMEFORMAT="[$name] time: real %1R s, user %1U s, sys %1S s"
    { time timeout -s INT -k 10 "$cap" "$@" >> "$log" 2>&1; } 2>> "$log"
    rc=$?
    tail -n 1 "$log" >> "$SUMMARY"
    note "[$name] rc=$rc$([ $rc = 124 ] && echo ' (timed out)')"
}

# ------------------------------------------------------------------ environment
ENVLOG=$OUT/env.log
in_venv() { python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; }
if [ "${GC_INSTALL:-}" = 1 ] || ! in_venv; then
    note "installing $(ls "$GC_WHEELS"/*.whl | wc -l) wheels from $GC_WHEELS into /tmp/site"
    rm -rf /tmp/site   # pip --target skips packages already there
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        "$GC_WHEELS"/*.whl >> "$ENVLOG" 2>&1 || note "pip install failed (see env.log)"
    export PYTHONPATH=/tmp/site:$REPO
else
    note "python3 runs in a virtual environment ($(python3 -c 'import sys; print(sys.prefix)')): no wheel install"
    export PYTHONPATH=$REPO
fi
if command -v nvidia-smi > /dev/null; then
    nvidia-smi >> "$ENVLOG" 2>&1
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 1 \
        > "$OUT/gpu-util.log" 2>&1 &
    SMI=$!
    trap 'kill $SMI 2> /dev/null' EXIT
fi
nproc >> "$ENVLOG"
python3 - >> "$ENVLOG" 2>&1 <<'EOF'
import importlib, platform, sys
import torch
import mtlbench.libmtl_compat as compat   # before LibMTL itself: it shims torchvision.models.utils
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("LibMTL", compat.LIBMTL_VERSION)
for name in ("torchvision", "numpy", "scipy", "pandas", "pyarrow", "cvxpy", "clarabel", "scs", "osqp", "ecos",
             "highspy", "openpyxl", "torchjd", "typer", "rich", "PIL", "matplotlib", "seaborn"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"), mod.__file__)
    except Exception as exc:  # noqa: BLE001 — report every missing piece, not just the first
        print(name, "IMPORT FAILED:", type(exc).__name__, exc)
import cvxpy
print("cvxpy solvers", cvxpy.installed_solvers())
EOF
note "environment printed"

# ------------------------------------------------------------------ data: shards in parallel, one CSV table
DATA=$GC_WORK/data/synthetic.csv
GC_IMG=$GC_IMG GC_PER_CLASS=$GC_PER_CLASS GC_SHARDS=$GC_SHARDS DATA=$DATA python3 - >> "$ENVLOG" 2>&1 <<'EOF'
"""Shards of mtlbench's synthetic set written by several processes (one seed each), then listed in one CSV table
with a split column: the published layout has one folder per set, and a table joins several."""
import multiprocessing as mp
import os
import time
from pathlib import Path

import pandas as pd

from mtlbench.data import resolve_dataset
from mtlbench.data.synth import write_synthetic

side, total = int(os.environ["GC_IMG"]), [int(n) for n in os.environ["GC_PER_CLASS"].split(",")]
shards = max(1, min(int(os.environ["GC_SHARDS"]), min(total)))
out = Path(os.environ["DATA"])
root = out.parent
counts = [tuple(n // shards + (k < n % shards) for n in total) for k in range(shards)]


def shard(k: int) -> Path:
    return write_synthetic(root / f"shard{k}", per_class=counts[k], image_size=side, seed=k, overwrite=True)


t0 = time.perf_counter()
with mp.get_context("fork").Pool(shards) as pool:
    folders = pool.map(shard, range(shards))
frame = pd.concat([resolve_dataset(str(f)).frame for f in folders], ignore_index=True)
frame[["path", "label", "target", "split"]].to_csv(out, index=False)
table = resolve_dataset(str(out))
print(f"synthetic data: {shards} shards, {side} px, {time.perf_counter() - t0:.1f} s ->", out)
print(table.frame.groupby("split").size().to_dict(), "classes", table.num_classes)
EOF
note "data: $(tail -n 1 "$ENVLOG")"

# ------------------------------------------------------------------ 1. speed.py
step speed "$GC_T_SPEED" "$OUT/speed.log" python3 benchmarks/speed.py --device "$GC_DEVICE" --img-size "$GC_IMG" \
    --batch-size "$GC_BATCH" --steps "$GC_SPEED_STEPS" --block "$GC_BLOCK" --cases "$GC_SPEED_CASES" "${FAST[@]}" \
    --data "$DATA"

# ------------------------------------------------------------------ 2. weightings.py
step weightings "$GC_T_WEIGHTINGS" "$OUT/weightings.log" python3 benchmarks/weightings.py --device "$GC_DEVICE" \
    --img-size "$GC_IMG" --batch-size "$GC_BATCH" --steps "$GC_STEPS" --block "$GC_BLOCK" "${FAST[@]}" \
    ${GC_WEIGHTINGS:+--weightings "$GC_WEIGHTINGS"} --data "$DATA"

# ------------------------------------------------------------------ 3. FastCAR, the paper's epochs
rm -rf "$GC_WORK/fastcar"
step fastcar "$GC_T_FASTCAR" "$OUT/fastcar.log" python3 -m mtlbench fastcar --data "$DATA" --device "$GC_DEVICE" \
    --img-size "$GC_IMG" --batch-size "$GC_BATCH" --epochs "$GC_FASTCAR_EPOCHS" "${FAST[@]}" \
    --out "$GC_WORK/fastcar"

# ------------------------------------------------------------------ 4. a slice of the grid, 1, 2, 4 cells per GPU
SPEC=$GC_WORK/gpu-slice.toml
amp=false; cl=false
[[ " ${FAST[*]} " == *" --amp "* ]] && amp=true
[[ " ${FAST[*]} " == *" --channels-last "* ]] && cl=true
cat > "$SPEC" <<EOF
name = "gpu-slice"
description = "HPS, MTAN x EW, PCGrad, IMTL x Decoder-1: throughput per --workers-per-gpu"
[data]
source = "$DATA"
[protocol]
epochs = $GC_SWEEP_EPOCHS
batch_size = $GC_BATCH
img_size = $GC_IMG
amp = $amp
channels_last = $cl
checkpoint_every = 0
${GC_SWEEP_MAX_STEPS:+max_steps_per_epoch = $GC_SWEEP_MAX_STEPS}
[axes]
architectures = ["HPS", "MTAN"]
weightings = ["EW", "PCGrad", "IMTL"]
decoders = ["decoder1"]
target_scaling = ["none"]
seeds = [0]
[fastcar]
enabled = false
EOF
for w in $GC_WPG; do
    rm -rf "$GC_WORK/sweep-wpg$w"
    # on a CPU dry run there is no GPU to share: the same number of worker processes instead
    par=(--workers-per-gpu "$w")
    [ "$GC_DEVICE" = cpu ] && par=(--workers "$w")
    step "sweep-wpg$w" "$GC_T_SWEEP" "$OUT/sweep.log" python3 -m mtlbench sweep "$SPEC" --out "$GC_WORK/sweep-wpg$w" \
        --executor local "${par[@]}" --device "$GC_DEVICE"
done
python3 - "$GC_WORK" $GC_WPG >> "$OUT/sweep.log" 2>&1 <<'EOF'
"""Per setting: cells finished, their training seconds and images/s, as each cell recorded them."""
import sys
from pathlib import Path

import pandas as pd

work = Path(sys.argv[1])
print(f"{'setting':14s} {'cells ok':>8s} {'sum train_s':>12s} {'sum total_s':>12s} {'img/s per cell':>15s} "
      f"{'concurrency':>11s}")
for w in sys.argv[2:]:
    runs = work / f"sweep-wpg{w}" / "runs.parquet"
    if not runs.exists():
        print(f"wpg {w:10s} no runs.parquet")
        continue
    df = pd.read_parquet(runs)
    ok = df[df.status == "ok"]
    print(f"wpg {w:10s} {len(ok):8d} {ok.train_s.sum():12.1f} {ok.total_s.sum():12.1f} "
          f"{ok.train_images_per_s.mean():15.1f} {sorted(set(df.concurrency.dropna().astype(int)))!s:>11s}")
    for r in df.itertuples():
        print(f"    {r.architecture}+{r.weighting}: {r.status}, train {r.train_s:.1f} s, total {r.total_s:.1f} s, "
              f"{r.train_images_per_s:.1f} img/s")
EOF
note "done: $((SECONDS - START)) s of a budget of $GC_BUDGET s"
