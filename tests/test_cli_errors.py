"""Bad input: one clear line naming the culprit, a non-zero exit, results already written left intact."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import run_cli


def _one_error_line(proc) -> str:
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_missing_data_folder(tmp_path, cache_dir):
    line = _one_error_line(run_cli("fastcar", "--data", str(tmp_path / "nowhere"), "--epochs", "1",
                                   "--img-size", "32", "--out", str(tmp_path / "r"), cache=cache_dir))
    assert "nowhere" in line


def test_missing_sheet(tmp_path, tiny_data, cache_dir):
    broken = tmp_path / "data"
    shutil.copytree(tiny_data, broken)
    (broken / "validset.xlsx").unlink()
    line = _one_error_line(run_cli("data", "info", str(broken), cache=cache_dir))
    assert "validset" in line


def test_corrupt_image(tmp_path, tiny_data, cache_dir):
    broken = tmp_path / "data"
    shutil.copytree(tiny_data, broken)
    victim = sorted((broken / "trainset" / "1").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])
    line = _one_error_line(run_cli("fastcar", "--data", str(broken), "--epochs", "1", "--img-size", "32",
                                   "--out", str(tmp_path / "r"), cache=cache_dir))
    assert victim.name in line


def test_unknown_names_and_values(tmp_path, cache_dir):
    line = _one_error_line(run_cli("sweep", "smoke", "--only", "arch=Nope", "--executor", "warp",
                                   cache=cache_dir))
    assert "warp" in line and "sequential" in line
    line = _one_error_line(run_cli("sweep", "no-such-spec", cache=cache_dir))
    assert "no-such-spec" in line and "smoke" in line
    line = _one_error_line(run_cli("fastcar", "--device", "tpu", "--out", str(tmp_path / "r"), cache=cache_dir))
    assert "tpu" in line


def test_bad_spec_names_the_key(tmp_path, cache_dir):
    spec = tmp_path / "bad.toml"
    spec.write_text('[axes]\nweightings = ["EW", "Magic"]\n')
    line = _one_error_line(run_cli("sweep", str(spec), "--dry-run", cache=cache_dir))
    assert "axes.weightings" in line and "Magic" in line and "IMTL" in line
    spec.write_text('[protocol]\nepochz = 3\n')
    line = _one_error_line(run_cli("sweep", str(spec), "--dry-run", cache=cache_dir))
    assert "protocol.epochz" in line and "epochs" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path, cache_dir):  # pragma: no cover - CI runs as root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    line = _one_error_line(run_cli("fastcar", "--out", str(ro / "x"), cache=cache_dir))
    assert "ro" in line


def test_output_path_that_is_a_file(tmp_path, cache_dir):
    target = tmp_path / "file"
    target.write_text("not a folder")
    line = _one_error_line(run_cli("fastcar", "--epochs", "1", "--img-size", "32", "--out", str(target),
                                   cache=cache_dir))
    assert str(target) in line and "not writable" in line


def test_wrong_label_type(tmp_path, cache_dir):
    table = tmp_path / "t.csv"
    img = tmp_path / "a.png"
    from PIL import Image
    Image.new("RGB", (32, 32)).save(img)
    table.write_text(f"path,label,target\n{img},0,hard\n{img},1,200\n{img},0,300\n")
    line = _one_error_line(run_cli("data", "info", str(table), cache=cache_dir))
    assert "target" in line


def test_amp_on_a_cpu_without_native_bf16_is_refused(tmp_path, tiny_data, cache_dir, monkeypatch):
    import torch

    from mtlbench.environment import check_amp, cpu_has_native_bf16
    from mtlbench.errors import ConfigError

    check_amp(torch.device("cpu"), False)
    check_amp(torch.device("cuda"), True)   # CUDA bf16 is native; only the device type matters here
    if not cpu_has_native_bf16():
        with pytest.raises(ConfigError, match="no native bf16"):
            check_amp(torch.device("cpu"), True)
    # oneDNN limited to its AVX2 kernels has no bf16 on any x86-64 CPU, so the CLI's refusal is exercised on
    # AVX-512 / AMX machines too (the subprocesses inherit the setting).
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    line = _one_error_line(run_cli("fastcar", "--data", str(tiny_data), "--device", "cpu", "--amp", "--epochs", "1",
                                   "--img-size", "32", "--out", str(tmp_path / "r"), cache=cache_dir))
    assert "protocol.amp" in line and "--amp" in line
    spec = tmp_path / "amp.toml"
    spec.write_text('[protocol]\namp = true\nimg_size = 32\nepochs = 1\n[axes]\narchitectures = ["HPS"]\n'
                    'weightings = ["EW"]\ndecoders = ["decoder1"]\n[fastcar]\nenabled = false\n')
    line = _one_error_line(run_cli("sweep", str(spec), "--data", str(tiny_data), "--device", "cpu",
                                   "--out", str(tmp_path / "s"), cache=cache_dir))
    assert "no native bf16" in line
    assert not (tmp_path / "s" / "runs.parquet").exists()


def test_amp_on_a_cpu_with_native_bf16_trains_in_bf16(tmp_path, tiny_data, cache_dir):
    """The other side of the refusal: where oneDNN has bf16 kernels (AVX512-BF16, AMX), --amp runs and is recorded."""
    import json

    import pandas as pd

    from mtlbench.environment import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: --amp is refused here (the test above)")
    out = tmp_path / "r"
    proc = run_cli("fastcar", "--data", str(tiny_data), "--device", "cpu", "--amp", "--epochs", "1", "--img-size",
                   "32", "--batch-size", "8", "--max-attempts", "1", "--out", str(out), cache=cache_dir)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = pd.read_parquet(out / "runs.parquet")
    assert list(runs.status) == ["ok"]
    assert json.loads(runs.config_json.iloc[0])["protocol"]["amp"] is True
