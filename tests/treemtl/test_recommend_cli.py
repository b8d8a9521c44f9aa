"""``mtlbench recommend`` end to end through the real CLI (subprocess, ``main()``'s error handling included)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import run_cli
from results_factory import pair_folder

from mtlbench.records.store import ResultsStore
from mtlbench.treemtl.tables import read_table


def _one_error_line(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_recommend_ranks_under_a_budget_and_writes_the_tables(tmp_path, cache_dir):
    res = pair_folder(tmp_path / "res")
    proc = run_cli("recommend", str(res), "--budget-backbones", "1.5", "--top-k", "2", cache=cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "12 of 12 cells finished ok" in out and "TreeMTL pair table, EW/decoder1" in out
    assert "task weights" in out and "MACs <= 1.5 backbones" in out
    assert "0,1|0,1|0,1|0/1|0/1" in out          # Tree-b3's layout key
    rec = read_table(res, "recommendations")
    assert rec.loc[rec.recommended, "architecture"].tolist() == ["Tree-b3", "Tree-b4"]
    assert rec.loc[rec.recommended, "fits"].all() and not rec.loc[~rec.recommended, "fits"].any()
    assert len(read_table(res, "pair_table")) == 12 and len(read_table(res, "task_weights")) == 2
    # --out elsewhere
    other = tmp_path / "elsewhere"
    proc = run_cli("recommend", str(res), "--max-mparams", "100", "--out", str(other), cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert (other / "treemtl" / "recommendations.parquet").exists()


def test_recommend_plan(tmp_path, cache_dir):
    res = pair_folder(tmp_path / "res", skip={("HPS", 1), ("Tree-b0", 0), ("Tree-b0", 1)})
    proc = run_cli("recommend", str(res), "--plan", "--data", "default", cache=cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "missing: Tree-b0 (b = 0) seed 0: not run" in proc.stdout
    assert "missing: HPS (b = 5) seed 1: not run" in proc.stdout
    plan = res / "treemtl" / "plan.toml"
    assert plan.exists() and "plan written to" in proc.stdout
    assert 'architectures = ["Tree-b0", "HPS"]' in plan.read_text()
    # the plan is a sweep spec: the sweep's dry run reads it (and loads the embedded data)
    dry = run_cli("sweep", str(plan), "--dry-run", "--out", str(res), cache=cache_dir)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "4 cells" in dry.stdout


@pytest.mark.parametrize("case, args, expect", [
    ("weighting", ["--weighting", "NoSuchW"], "unknown weighting 'NoSuchW'"),
    ("budgets", ["--budget-backbones", "1", "--max-gmacs", "2"], "give one budget, not 2"),
    ("fine", ["--blocks", "fine"], "--blocks fine needs a pair table with 10 branch points"),
    ("blocks", ["--blocks", "tiny"], "--blocks must be one of coarse, fine"),
    ("tight", ["--max-gmacs", "1e-9"], "no layout fits the budget MACs <= 1e-09 G"),
])
def test_recommend_bad_options(tmp_path, cache_dir, case, args, expect):
    res = pair_folder(tmp_path / "res")
    line = _one_error_line(run_cli("recommend", str(res), *args, cache=cache_dir))
    assert line.startswith("error:") and expect in line


def test_recommend_bad_results(tmp_path, cache_dir):
    ResultsStore(tmp_path / "empty")
    assert "holds no runs" in _one_error_line(run_cli("recommend", str(tmp_path / "empty"), cache=cache_dir))
    no_b0 = pair_folder(tmp_path / "no_b0", skip={("Tree-b0", 0), ("Tree-b0", 1)})
    line = _one_error_line(run_cli("recommend", str(no_b0), cache=cache_dir))
    assert "no Tree-b0 run (b = 0, independent trunks) finished ok" in line and "--plan" in line
    old = pair_folder(tmp_path / "old", no_mae=True)
    line = _one_error_line(run_cli("recommend", str(old), cache=cache_dir))
    assert "epochs.val_mae is null in every selected run" in line
    assert run_cli("recommend", str(old), "--reg-metrics", "mape", cache=cache_dir).returncode == 0


@pytest.mark.slow
def test_recommend_verify_trains_the_top_layouts(tmp_path, tiny_data, cache_dir):
    """A real pair sweep on tiny data (6 models, 3 epochs of 2 steps, 32 px), then --verify trains the top 3 with
    seed 1 and reports both correlations; the verification runs stay out of the pair table."""
    from mtlbench.config import TrainingProtocol
    from mtlbench.sweep.runner import run_sweep
    from mtlbench.sweep.spec import SweepSpec
    from mtlbench.treemtl.from_results import COARSE_ARCHITECTURES, VERIFY_SWEEP

    res = tmp_path / "res"
    proto = TrainingProtocol(epochs=3, batch_size=8, img_size=32, max_steps_per_epoch=2, latency_repeats=1,
                             checkpoint_every=0, device="cpu")
    spec = SweepSpec(name="pairs", data={"source": str(tiny_data)}, protocol=proto,
                     architectures=COARSE_ARCHITECTURES, weightings=("EW",), decoders=("decoder1",), seeds=(0,),
                     fastcar=None)
    outcome = run_sweep(spec, res, cache_dir=str(cache_dir))
    assert outcome.all_ok and len(outcome.results) == 6
    proc = run_cli("recommend", str(res), "--top-k", "3", "--verify", "--data", str(tiny_data), cache=cache_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Spearman rank correlation =" in proc.stdout and "Pearson correlation =" in proc.stdout
    rec = read_table(res, "recommendations")
    top = rec[rec.recommended]
    assert len(top) == 3 and top["verified_run_id"].notna().all() and (top["verified_seed"] == 1).all()
    assert (top["verified_status"] == "ok").all() and top["trained_score"].notna().all()
    runs = ResultsStore(res, create=False).read("runs")
    ver = runs[runs["sweep"] == VERIFY_SWEEP]
    assert sorted(ver["architecture"]) == sorted(top["architecture"]) and (ver["seed"] == 1).all()
    # the pair table still has one seed per branch point; a second --verify reuses the finished runs
    assert (read_table(res, "pair_table")["n_seeds"] == 1).all()
    again = run_cli("recommend", str(res), "--top-k", "3", "--verify", "--data", str(tiny_data), cache=cache_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(ResultsStore(res, create=False).read("runs")) == 9
    pd.testing.assert_frame_equal(read_table(res, "recommendations"), rec)
    # another data set than the pair runs': refused before training
    line = _one_error_line(run_cli("recommend", str(res), "--verify", "--data", "default", cache=cache_dir))
    assert "is not the data of the pair table's runs" in line


def test_the_shipped_tree_specs(tmp_path, cache_dir):
    """``tree`` (the paper-protocol pair sweep) plans the pair models; ``tree-smoke`` runs through the CLI and
    ``recommend`` reads it."""
    import mtlbench.methods  # noqa: F401
    from mtlbench.methods.registry import ARCHITECTURES, WEIGHTINGS, not_applicable
    from mtlbench.sweep.spec import load_spec

    tree = load_spec("tree")
    assert tree.architectures == ("Tree-b0", "Tree-b1", "Tree-b2", "Tree-b3", "Tree-b4", "HPS")
    assert len(tree.weightings) == 17 and tree.protocol.img_size == 224 and tree.protocol.epochs == 100
    cells = tree.cells()
    na = [c for c in cells if not_applicable(ARCHITECTURES.entry(c.architecture), WEIGHTINGS.entry(c.weighting))]
    assert len(cells) == 6 * 17 * 2 * 3 and all(c.architecture == "Tree-b0" for c in na) and na
    res = tmp_path / "res"
    proc = run_cli("sweep", "tree-smoke", "--out", str(res), cache=cache_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = run_cli("recommend", str(res), "--budget-backbones", "1.6", cache=cache_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = read_table(res, "recommendations")
    assert rec.loc[rec.recommended, "fits"].all() and len(read_table(res, "pair_table")) == 12
