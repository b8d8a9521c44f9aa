"""A spec's [ablation]: one factor at a time from the spec's setting, each value its own labelled runs that keep
their run ids, kept out of the main report and compared with the spec's setting in the ablation table."""

from __future__ import annotations

import pandas as pd
import pytest

from mtlbench.errors import ConfigError
from mtlbench.report.data import METRIC_SPECS, aggregate_ablation, load_results, metric_specs
from mtlbench.report.render import render_report
from mtlbench.sweep.runner import run_sweep
from mtlbench.sweep.spec import load_spec, parse_spec

GRID = {"architectures": ["HPS"], "weightings": ["EW"], "decoders": ["decoder1"], "seeds": [0, 1]}


def test_each_value_repeats_the_runs_it_touches_with_one_change():
    spec = parse_spec({"axes": GRID, "ablation": {"protocol": {"lr": [3e-4]},
                                                  "fastcar": {"label_scale": ["unit"]}}})
    cells = spec.cells()
    base = parse_spec({"axes": GRID}).cells()
    assert cells[:len(base)] == base                            # the spec's own setting first, unchanged
    lr = [c for c in cells if c.setting == "protocol.lr=0.0003"]
    unit = [c for c in cells if c.setting == "fastcar.label_scale=unit"]
    assert len(lr) == len(base) and all(c.protocol.lr == 3e-4 for c in lr)   # a protocol factor: every run
    assert [c.kind for c in unit] == ["fastcar", "fastcar"]                   # a FastCAR factor: FastCAR only
    assert all(c.fastcar.label_scale == "unit" and c.protocol == spec.protocol for c in unit)
    assert len(cells) == len(base) * 2 + 2
    assert len({c.run_id("x") for c in cells}) == len(cells)
    assert [c.label for c in unit] == ["FastCAR [fastcar.label_scale=unit] seed=0",
                                       "FastCAR [fastcar.label_scale=unit] seed=1"]


def test_the_setting_label_is_not_part_of_the_run_id():
    """An ablation run is the run its settings make: the same settings given as the spec's own are the same run, so
    a results folder's finished runs count whichever spec asks for them."""
    ablated = parse_spec({"axes": GRID, "ablation": {"protocol": {"batch_size": [64]}}}).cells()
    direct = parse_spec({"axes": GRID, "protocol": {"batch_size": 64}}).cells()
    ids = {c.run_id("x") for c in ablated if c.setting}
    assert ids == {c.run_id("x") for c in direct}


def test_a_fastcar_only_spec_empties_all_three_grid_axes():
    spec = parse_spec({"axes": {"architectures": [], "weightings": [], "decoders": [], "seeds": [0, 1, 2]}})
    assert [c.kind for c in spec.cells()] == ["fastcar"] * 3
    with pytest.raises(ConfigError, match="axes.architectures"):
        parse_spec({"axes": {"architectures": [], "weightings": ["EW"], "decoders": []}})
    with pytest.raises(ConfigError, match="axes.architectures"):   # no FastCAR either: nothing to run
        parse_spec({"axes": {"architectures": [], "weightings": [], "decoders": []}, "fastcar": {"enabled": False}})
    shipped = load_spec("fastcar-ablation-cpu")
    assert len(shipped.cells()) == 15 and {c.kind for c in shipped.cells()} == {"fastcar"}


@pytest.mark.parametrize("ablation,match", [
    ({"protocol": {"lr": 3e-4}}, "ablation.protocol.lr must be a non-empty list"),
    ({"protocol": {"lr": []}}, "ablation.protocol.lr must be a non-empty list"),
    ({"protocol": {"lrr": [3e-4]}}, "unknown key ablation.protocol.lrr"),
    ({"protocol": {"device": ["cuda"]}}, "unknown key ablation.protocol.device"),   # not a factor of the result
    ({"protocol": {"lr": [1e-3]}}, "the spec's own setting"),
    ({"protocol": {"lr": [3e-4, 3e-4]}}, "repeats a value"),
    ({"protocol": {"batch_size": [0]}}, r"ablation.protocol.batch_size: 0 is refused \(protocol.batch_size"),
    ({"fastcar": {"label_scale": ["minmax"]}}, "ablation.fastcar.label_scale: 'minmax' is refused"),
    ({"optimiser": {"lr": [3e-4]}}, "unknown key ablation.optimiser"),
    ({"protocol": [3e-4]}, "ablation.protocol must be a table"),
    ({"protocol": {"img_size": [64]}}, "ablation.protocol.img_size: a sweep decodes its images once"),
    ({"protocol": {"amp": [True]}}, "ablation.protocol.amp: a sweep checks once"),
    ({"protocol": {"bn_reestimate_batches": [True]}}, "bn_reestimate_batches: True is refused"),
])
def test_ablation_errors_name_the_key(ablation, match):
    with pytest.raises(ConfigError, match=match):
        parse_spec({"axes": GRID, "ablation": ablation})


def test_a_fastcar_factor_needs_fastcar():
    with pytest.raises(ConfigError, match="ablation.fastcar: FastCAR is not enabled"):
        parse_spec({"axes": GRID, "fastcar": {"enabled": False}, "ablation": {"fastcar": {"label_scale": ["unit"]}}})


@pytest.fixture(scope="module")
def ablated(tmp_path_factory, tiny_data, cache_dir):
    out = tmp_path_factory.mktemp("ablation") / "results"
    spec = parse_spec({"data": {"source": str(tiny_data)},
                       "protocol": {"epochs": 2, "batch_size": 8, "img_size": 32, "max_steps_per_epoch": 2,
                                    "latency_repeats": 1, "checkpoint_every": 0},
                       "axes": {"architectures": ["HPS"], "weightings": ["EW"], "decoders": ["decoder1"],
                                "seeds": [0, 1]},
                       "fastcar": {"max_attempts": 1},
                       "ablation": {"protocol": {"lr": [3e-4]}, "fastcar": {"label_scale": ["unit"]}}})
    outcome = run_sweep(spec, out, cache_dir=str(cache_dir))
    assert outcome.all_ok, outcome.counts()
    return out


def test_ablation_runs_are_recorded_with_their_setting_and_kept_out_of_the_main_report(ablated):
    runs = pd.read_parquet(ablated / "runs.parquet")
    assert runs.setting.fillna("spec").value_counts().to_dict() == {
        "spec": 4, "protocol.lr=0.0003": 4, "fastcar.label_scale=unit": 2}
    data = load_results([ablated])
    assert len(data.runs) == 4 and data.runs.setting.isna().all()      # cells, FastCAR and findings: the spec's own
    assert len(data.ablation) == 6


def test_the_ablation_table_is_mean_and_std_over_seeds_per_setting(ablated):
    data = load_results([ablated])
    table = aggregate_ablation(data, metric_specs(["accuracy", "mape"]))
    assert list(zip(table.run, table.setting)) == [
        ("FastCAR", "spec"), ("FastCAR", "fastcar.label_scale=unit"), ("FastCAR", "protocol.lr=0.0003"),
        ("HPS+EW/decoder1", "spec"), ("HPS+EW/decoder1", "protocol.lr=0.0003")]
    all_runs = pd.concat([data.runs.assign(setting="spec"), data.ablation])
    for _, row in table.iterrows():
        kind = "fastcar" if row.run == "FastCAR" else "mtl"
        group = all_runs[(all_runs.kind == kind) & (all_runs.setting == row.setting) & (all_runs.status == "ok")]
        assert row.n_ok == len(group) == 2
        assert row.accuracy_mean == pytest.approx(group.best_accuracy.mean())
        assert row.accuracy_std == pytest.approx(group.best_accuracy.std())
        assert (row.mape_min, row.mape_max) == pytest.approx((group.best_mape.min(), group.best_mape.max()))
        assert row.val_accuracy_spread_mean == pytest.approx(group.val_accuracy_spread.mean())
        assert row.val_mape_spread_std == pytest.approx(group.val_mape_spread.std())


def test_a_run_recorded_under_one_setting_is_not_taken_for_another(ablated, tmp_path, tiny_data, cache_dir):
    """The same settings make the same run: a spec whose own setting is an earlier sweep's ablation setting finds
    those runs recorded under the ablation's label, and says so instead of mixing them into its Table 1."""
    from mtlbench.sweep.runner import plan_sweep
    from mtlbench.records.store import ResultsStore
    from mtlbench.data import resolve_dataset

    own = parse_spec({"data": {"source": str(tiny_data)},
                      "protocol": {"epochs": 2, "batch_size": 8, "img_size": 32, "max_steps_per_epoch": 2,
                                   "latency_repeats": 1, "checkpoint_every": 0, "lr": 3e-4},
                      "axes": {"architectures": ["HPS"], "weightings": ["EW"], "decoders": ["decoder1"],
                               "seeds": [0, 1]},
                      "fastcar": {"max_attempts": 1}})
    fingerprint = resolve_dataset(str(tiny_data), cache_dir=str(cache_dir)).fingerprint()
    store = ResultsStore(ablated, create=False)
    with pytest.raises(ConfigError, match=r"recorded in .* under the ablation setting protocol.lr=0.0003, and this "
                                          r"sweep asks for it under a spec's own setting; write this sweep to another"):
        plan_sweep(own, store, fingerprint)
    assert not any(c.done for c in plan_sweep(own, store, fingerprint, force=True).cells)   # --force runs them


def test_the_report_writes_the_ablation_table(ablated, tmp_path):
    report = render_report([ablated], tmp_path / "report", formats=("md", "csv", "html"))
    csv = pd.read_csv(tmp_path / "report" / "ablation.csv")
    assert len(csv) == 5
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "## Ablation: one factor at a time" in md and "protocol.lr=0.0003" in md
    # each figure "mean ± std [min-max]" over the setting's two seeds
    row = csv[(csv["run"] == "FastCAR") & (csv["setting"] == "spec")].iloc[0]
    spec = METRIC_SPECS["accuracy"]
    shown = (f"{spec.format(row.accuracy_mean)} ± {spec.format_std(row.accuracy_std)} "
             f"[{spec.format(row.accuracy_min)}-{spec.format(row.accuracy_max)}]")
    assert f"| FastCAR | spec | 2/2 | {shown} |" in md
    assert report.fastcar["n_runs"] == 2                               # Table 1's FastCAR: the spec's setting
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Ablation: one factor at a time" in html and "fastcar.label_scale=unit" in html
