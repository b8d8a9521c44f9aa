"""Method options: a spec's ``[arch_args.X]`` / ``[weight_args.X]`` are checked against the registry's defaults, and
every run records every option of its architecture and weighting (defaults merged with the spec's overrides)."""

from __future__ import annotations

import inspect
import json
import re

import pandas as pd
import pytest
import torch

from conftest import run_cli, small_spec
from mtlbench.errors import ConfigError
from mtlbench.methods.architectures import ARCHITECTURES
from mtlbench.methods.weightings import WEIGHTINGS
from mtlbench.models.mtl import build_mtl_model
from mtlbench.registry import check_options, option_defaults
from mtlbench.sweep.runner import run_sweep
from mtlbench.sweep.spec import load_spec, parse_spec

CPU = torch.device("cpu")
ONE_CELL = {"axes": {"architectures": ["HPS"], "weightings": ["EW"], "decoders": ["decoder1"]},
            "fastcar": {"enabled": False}}


def _check(registry, name: str, options: dict) -> dict:
    entry = registry.entry(name)
    return check_options(entry, options, f"x.{entry.name}")


# -- the checker ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("registry,name", [(r, n) for r in (ARCHITECTURES, WEIGHTINGS) for n in r.names()])
def test_every_method_accepts_its_own_defaults(registry, name):
    entry = registry.entry(name)
    assert _check(registry, name, option_defaults(entry)) == option_defaults(entry)


@pytest.mark.parametrize("registry,name,options", [
    (WEIGHTINGS, "Nash-MTL", {"max_norm": 2}),              # an int where the default is a float
    (WEIGHTINGS, "Nash-MTL", {"max_norm": 2.5, "optim_niter": 5}),
    (WEIGHTINGS, "MoCo", {"MoCo_normalize": False}),
    (WEIGHTINGS, "Aligned-MTL", {"Aligned_tol": 1e-6}),      # a None default takes a number
    (WEIGHTINGS, "Aligned-MTL", {"Aligned_tol": 0}),
    (WEIGHTINGS, "RLW", {"dist": "Uniform"}),
    (ARCHITECTURES, "MMoE", {"num_experts": [2]}),
    (ARCHITECTURES, "LTB", {"gumbel_hard": True, "tau_init": 2}),
])
def test_well_typed_options_pass_unchanged(registry, name, options):
    assert _check(registry, name, options) == options


@pytest.mark.parametrize("registry,name,options,match", [
    (WEIGHTINGS, "Nash-MTL", {"max_nrom": 2},
     r"^x\.Nash-MTL: unknown option 'max_nrom'; allowed: max_norm, optim_niter, (\w+, )*update_weights_every$"),
    (WEIGHTINGS, "EW", {"alpha": 1.0}, r"x\.EW: unknown option 'alpha'; allowed: none \(EW takes no options\)"),
    (WEIGHTINGS, "GradDrop", {"rep_grad": False}, r"x\.GradDrop: unknown option 'rep_grad'; allowed: leak$"),
    (ARCHITECTURES, "MMoE", {"img_size": [3, 8, 8]}, r"x\.MMoE: unknown option 'img_size'"),
    (WEIGHTINGS, "Nash-MTL", {"max_norm": "2"}, r"x\.Nash-MTL\.max_norm must be a number .*got '2' \(str\)"),
    (WEIGHTINGS, "Nash-MTL", {"optim_niter": 2.0}, r"x\.Nash-MTL\.optim_niter must be an integer"),
    (WEIGHTINGS, "Nash-MTL", {"optim_niter": True}, r"optim_niter must be an integer .*\(bool\)"),
    (WEIGHTINGS, "Nash-MTL", {"max_norm": True}, r"max_norm must be a number"),
    (WEIGHTINGS, "MoCo", {"MoCo_normalize": 1}, r"x\.MoCo\.MoCo_normalize must be a boolean \(default True\)"),
    (WEIGHTINGS, "Aligned-MTL", {"Aligned_tol": "auto"}, r"x\.Aligned-MTL\.Aligned_tol must be a number"),
    (WEIGHTINGS, "RLW", {"dist": 1}, r"x\.RLW\.dist must be a string"),
    (ARCHITECTURES, "MMoE", {"num_experts": 3}, r"x\.MMoE\.num_experts must be a list of integers"),
    (ARCHITECTURES, "CGC", {"num_experts": [1, 1.5, 1]}, r"x\.CGC\.num_experts must be a list of integers"),
    (ARCHITECTURES, "LTB", {"gumbel_hard": 1}, r"x\.LTB\.gumbel_hard must be a boolean"),
    # string options with a fixed set of values: the registry entry's choices
    (ARCHITECTURES, "LTB", {"eval_tree": "mean"}, r"x\.LTB\.eval_tree must be one of 'argmax', 'sample', got 'mean'"),
    (ARCHITECTURES, "LTB", {"tau_schedule": "linear"}, r"x\.LTB\.tau_schedule must be one of 'libmtl', "),
    (WEIGHTINGS, "MoCo", {"MoCo_lambda_update": "sigmoid"}, r"x\.MoCo\.MoCo_lambda_update must be one of"),
    (WEIGHTINGS, "Nash-MTL", {"task_specific_grads": "both"}, r"x\.Nash-MTL\.task_specific_grads must be one of"),
    (WEIGHTINGS, "RLW", {"dist": "Cauchy"}, r"x\.RLW\.dist must be one of 'Uniform'"),
    (WEIGHTINGS, "MGDA-loss", {"mgda_gn": "l2"}, r"x\.MGDA-loss\.mgda_gn must be one of 'loss', got 'l2'"),
])
def test_unknown_or_mistyped_options_are_errors(registry, name, options, match):
    with pytest.raises(ConfigError, match=match):
        _check(registry, name, options)


# -- specs ----------------------------------------------------------------------------------------------------------
def test_spec_options_are_checked_and_keyed_by_canonical_name():
    spec = parse_spec({**ONE_CELL, "weight_args": {"ew": {}, "nash-mtl": {"max_norm": 2}},
                       "arch_args": {"mmoe": {"num_experts": [2]}}})
    assert spec.weight_args == {"EW": {}, "Nash-MTL": {"max_norm": 2}}
    assert spec.arch_args == {"MMoE": {"num_experts": [2]}}


@pytest.mark.parametrize("raw,match", [
    ({"weight_args": {"Nash-MTL": {"max_nrom": 2}}}, r"weight_args\.Nash-MTL: unknown option 'max_nrom'; allowed: "),
    ({"arch_args": {"LTB": {"tau_init": "hot"}}}, r"arch_args\.LTB\.tau_init must be a number"),
    ({"weight_args": {"Magic": {"x": 1}}}, r"weight_args: unknown weighting 'Magic'; allowed: EW, .*Aligned-MTL"),
    ({"arch_args": {"Tree": {}}}, r"arch_args: unknown architecture 'Tree'; allowed: HPS, .*LTB"),
    ({"weight_args": {"DWA": 2.0}}, r"weight_args\.DWA must be a table of options"),
    ({"weight_args": 3}, r"weight_args must hold one table per weighting"),
    ({"weight_args": {"dwa": {"T": 1.0}, "DWA": {"T": 3.0}}}, r"weight_args\.DWA is given twice"),
])
def test_spec_option_errors_name_the_method_and_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_spec({**ONE_CELL, **raw})


def _error_line(proc) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_cli_unknown_option_exits_2_with_one_line(tmp_path, cache_dir):
    spec = tmp_path / "typo.toml"
    spec.write_text('[axes]\nweightings = ["Nash-MTL"]\n[weight_args.Nash-MTL]\nmax_nrom = 2\n')
    line = _error_line(run_cli("sweep", str(spec), "--dry-run", cache=cache_dir))
    assert "Nash-MTL" in line and "max_nrom" in line and "max_norm" in line


def test_cli_mistyped_value_exits_2_with_one_line(tmp_path, cache_dir):
    spec = tmp_path / "typed.toml"
    spec.write_text('[axes]\narchitectures = ["MMoE"]\n[arch_args.MMoE]\nnum_experts = 3\n')
    line = _error_line(run_cli("sweep", str(spec), "--dry-run", cache=cache_dir))
    assert "MMoE" in line and "num_experts" in line and "list of integers" in line


# -- recorded hyper-parameters ----------------------------------------------------------------------------------------
def _recorded(architecture: str, weighting: str, **overrides: dict) -> dict:
    """The hyper-parameters a run records: the model's ``hparams``, through JSON as ``runs.run_mtl`` writes them."""
    built = build_mtl_model(architecture, weighting, "decoder1", num_classes=6, img_size=32, device=CPU, **overrides)
    return json.loads(json.dumps(built.hparams, sort_keys=True, default=str))


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_every_architecture_records_every_default(name):
    hp = _recorded(name, "EW")["architecture"]
    assert hp == {**option_defaults(ARCHITECTURES.entry(name)), "img_size": [3, 32, 32]}


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_weighting_records_every_default(name):
    hp = _recorded("HPS", name)
    assert hp["weighting"] == option_defaults(WEIGHTINGS.entry(name))
    assert hp["rep_grad"] == bool(WEIGHTINGS.entry(name).trait("rep_grad", False))


def test_overrides_are_merged_into_the_record():
    hp = _recorded("MMoE", "MoCo", arch_args={"num_experts": [2]}, weight_args={"MoCo_rho": 0.1})
    assert hp["weighting"] == {**option_defaults(WEIGHTINGS.entry("MoCo")), "MoCo_rho": 0.1}
    assert hp["architecture"]["num_experts"] == [2]


# What a method reads from its keyword arguments, as its source spells it (``kwargs['x']``, ``kwargs.get('x')``,
# ``opts['x']`` for ``opts = {**DEFAULTS, **kwargs}``); ``img_size`` comes from the protocol, not from the spec.
_READS = re.compile(r"""\b(?:kwargs|opts)\s*(?:\[\s*|\.get\(\s*)['"](\w+)['"]""")
_FROM_PROTOCOL = {"img_size"}


@pytest.mark.parametrize("registry,name", [(r, n) for r in (ARCHITECTURES, WEIGHTINGS) for n in r.names()])
def test_the_registry_states_every_option_the_method_reads(registry, name):
    entry = registry.entry(name)
    read: set[str] = set()
    for cls in inspect.getmro(entry.obj):
        if cls.__module__.split(".")[0] in ("LibMTL", "mtlbench"):
            try:
                source = inspect.getsource(cls)
            except OSError:   # a class made by a factory (Tree-b0..b4): its base's source is read
                continue
            source = re.sub(r"#.*", "", source)  # LibMTL's RLW keeps dead code in comments
            read |= set(_READS.findall(source))
    assert read - _FROM_PROTOCOL <= set(option_defaults(entry)), read


@pytest.mark.slow
def test_a_real_run_records_defaults_and_overrides(tmp_path, tiny_data, cache_dir):
    spec = small_spec(tmp_path, tiny_data, weightings='["MoCo", "Aligned-MTL"]', fastcar="false",
                      extra="[weight_args.MoCo]\nMoCo_rho = 0.1\n")
    outcome = run_sweep(load_spec(spec), tmp_path / "res", cache_dir=str(cache_dir))
    assert outcome.all_ok
    runs = pd.read_parquet(tmp_path / "res" / "runs.parquet").set_index("weighting")
    moco = json.loads(runs.loc["MoCo", "hparams_json"])["weighting"]
    assert moco == {**option_defaults(WEIGHTINGS.entry("MoCo")), "MoCo_rho": 0.1} and "MoCo_normalize" in moco
    assert json.loads(runs.loc["Aligned-MTL", "hparams_json"])["weighting"] == {"Aligned_tol": None}
