"""run_info.json says enough to compute the same bytes again: the shard layout (which moves the scores'
last digits), the torch and hardware that computed the embeddings (recorded by embed itself, so a
predict on another host does not stand in for them), and the code itself where the version string
spans many commits (a determinism review: two runs with identical run_info.json gave other scores)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import read_h5
from virnucpro import h5shard
from virnucpro import prepared as fmt
from virnucpro.embed import _hardware_setting, _setting_value
from virnucpro.predict import code_sha256

CODING = "ATG" + "GCTAAAGAT" * 30 + "TAA"  # one ORF per chunk-sized record


def _sample(tmp_path: Path, records: int) -> Path:
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">r{i}\n{CODING}\n" for i in range(records)))
    return fasta


def _prepare_embed_predict(run_cli, fasta: Path, folder: Path, shard_size: int, models: Path) -> dict:
    code, message = run_cli("prepare", fasta, "--outdir", folder / "prepared", "--shard-size", shard_size)
    assert code == 0, message
    shards = sorted((folder / "prepared" / "shards").glob("shard_*.tsv"))
    for shard in shards:
        code, message = run_cli("embed", shard, "--models", models, "--out", folder / f"{shard.stem}.h5",
                                "--device", "cpu", "--threads", 1)
        assert code == 0, message
    code, message = run_cli("predict", "--prepared", folder / "prepared", "--embeddings",
                            *sorted(folder.glob("*.h5")), "--models", models, "--outdir", folder / "out")
    assert code == 0, message
    return json.loads((folder / "out" / "run_info.json").read_text())


def test_the_shard_layout_is_recorded_and_lays_the_shards_out_again(tmp_path, run_cli, tiny_models):
    fasta = _sample(tmp_path, 7)
    info = _prepare_embed_predict(run_cli, fasta, tmp_path / "a", 3, tiny_models)
    orfs = info["counts"]["orfs"]
    assert orfs > 6 and info["shard_layout"] == {"shards": -(-orfs // 3), "records_per_shard": 3}
    again = info["shard_layout"]["records_per_shard"]
    code, message = run_cli("prepare", fasta, "--outdir", tmp_path / "b", "--shard-size", again)
    assert code == 0, message
    first, second = (fmt.load_manifest(folder)["shards"] for folder in (tmp_path / "a" / "prepared", tmp_path / "b"))
    assert [entry["sha256"] for entry in first] == [entry["sha256"] for entry in second]


def test_one_shard_records_its_records(tmp_path, run_cli, tiny_models):
    info = _prepare_embed_predict(run_cli, _sample(tmp_path, 2), tmp_path / "a", 100_000, tiny_models)
    assert info["shard_layout"] == {"shards": 1, "records_per_shard": info["counts"]["orfs"]}


def test_the_code_hash_changes_with_any_module_and_with_nothing_else(tmp_path):
    package = Path(code_sha256.__code__.co_filename).parent
    copy = tmp_path / "src" / "virnucpro"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "notes.txt").write_text("not code")
    assert code_sha256(copy) == code_sha256()
    module = copy / "encoders" / "batching.py"
    original = module.read_bytes()
    module.write_bytes(original + b"\n# one more line\n")
    assert code_sha256(copy) != code_sha256()
    module.write_bytes(original)
    module.rename(module.with_name("batching_.py"))  # the same bytes, in the same place in path order
    assert code_sha256(copy) != code_sha256()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="an x86 instruction set to ask for")
def test_the_cpu_instruction_set_that_computed_is_recorded(tmp_path, small_sample, tiny_models):
    """torch picks its kernels by the CPU's instruction set, and they round differently: an AVX2 node
    and an AVX-512 one give other last digits. ATEN_CPU_CAPABILITY stands in for the older node."""
    prepared, _shard = small_sample
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run([sys.executable, "-m", "virnucpro", "embed", str(prepared / "shards" / fmt.shard_name(0)),
                           "--models", str(tiny_models), "--out", str(tmp_path / "s.h5"), "--device", "cpu",
                           "--no-compile"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    settings = read_h5(tmp_path / "s.h5")[3]["settings"].split(",")
    assert "cpu_isa=AVX2" in settings and f"torch={torch.__version__}" in settings, settings
    assert h5shard.read_info(tmp_path / "s.h5").settings == tuple(settings)


@pytest.mark.parametrize("name, entry", [("NVIDIA H100 80GB HBM3", "gpu=NVIDIA_H100_80GB_HBM3"),
                                         ("A100-SXM4-40GB, rev 1", "gpu=A100-SXM4-40GB__rev_1"),
                                         ("x" * 200, "gpu=" + "x" * 80), ("", "gpu=_")])
def test_a_gpu_is_named_as_a_settings_value_predict_reads(monkeypatch, name, entry):
    """Every name a GPU may have becomes an entry predict takes (one it refused would make every
    shard embedded on that GPU exit 5 in predict)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert _hardware_setting(torch.device("cuda")) == entry
    assert h5shard.SETTING_ENTRY.fullmatch(entry)


def test_a_gpu_without_a_driver_to_ask_is_unknown_and_the_cpu_names_its_instruction_set(monkeypatch):
    def no_driver(device=None):
        raise RuntimeError("Found no NVIDIA driver on your system")

    monkeypatch.setattr(torch.cuda, "get_device_name", no_driver)
    assert _hardware_setting(torch.device("cuda")) == "gpu=unknown"
    assert _hardware_setting(torch.device("cpu")) == f"cpu_isa={torch.backends.cpu.get_cpu_capability()}"
    assert h5shard.SETTING_ENTRY.fullmatch(_hardware_setting(torch.device("cpu")))
