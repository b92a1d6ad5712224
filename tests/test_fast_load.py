"""ESM-2's fp16 copy (issue 10 point 4): derived once from the verified .pt, recorded in the manifest,
trusted only while both checksums hold, loaded straight to the device, and bit-identical in use."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mount_helpers import remount_read_only, tmpfs
import torch

from store_fixtures import (ESM2_COPY, ESM2_WEIGHTS, folder_held_by_another_process,  # noqa: F401 (autouse)
                            fresh_model_process_state)
from virnucpro import prepared as fmt
from virnucpro.encoders.esm2 import Esm2Encoder
from virnucpro.models import download, store

CPU = torch.device("cpu")
PROTEINS = ["MKVLAAGIVLLLAC", "M", "ACDEFGHIKLMNPQRSTVWY" * 7, "MKV<mask>LLA<mask>GG", "WWPQ"]


def weights(models: Path) -> Path:
    return models / ESM2_WEIGHTS


def copy_of(models: Path) -> Path:
    return models / ESM2_COPY


def fp16_record(models: Path) -> dict | None:
    return json.loads((models / store.MANIFEST).read_text())["models"]["esm2"].get("fp16")


def from_pt(path: Path, dtype=torch.float16) -> Esm2Encoder:
    """The encoder built from the .pt itself (today's path), never from a copy."""
    data = torch.load(str(path), map_location="cpu", weights_only=False)
    return Esm2Encoder.from_checkpoint_data(data, CPU, dtype, label=str(path))


def vectors(encoder: Esm2Encoder) -> torch.Tensor:
    return encoder.embed(encoder.tokenize(PROTEINS))


def change_weights(models: Path, record_in_manifest: bool) -> None:
    """Another .pt in place (as a new download would leave it, manifest included when asked)."""
    data = torch.load(str(weights(models)), weights_only=False)
    data["model"]["encoder.sentence_encoder.layers.0.fc1.bias"] += 0.5
    torch.save(data, str(weights(models)))
    if record_in_manifest:
        manifest = store.read_manifest(models)
        manifest["models"]["esm2"]["sha256"]["esm2_tiny.pt"] = store.sha256_file(weights(models))
        store.write_manifest(models, manifest)


def test_copy_written_once_recorded_and_reused(models, monkeypatch):
    first = Esm2Encoder(weights(models), CPU, torch.float16)
    assert first.loaded_from == copy_of(models)
    stamp = copy_of(models).stat().st_mtime_ns
    assert fp16_record(models) == {"file": "esm2_tiny.fp16.safetensors",
                                   "sha256": store.sha256_file(copy_of(models)),
                                   "source_sha256": store.sha256_file(weights(models))}
    def no_rehash_of_the_copy(real_hash):
        def hashing(path, *args, **kwargs):
            assert Path(path) != copy_of(models), "the copy was re-hashed despite the hash cache"
            return real_hash(path, *args, **kwargs)
        return hashing

    monkeypatch.setattr(store, "sha256_file", no_rehash_of_the_copy(store.sha256_file))
    monkeypatch.setattr(store, "hashed_as_it_is", no_rehash_of_the_copy(store.hashed_as_it_is))
    second = Esm2Encoder(weights(models), CPU, torch.float16)
    assert second.loaded_from == copy_of(models) and copy_of(models).stat().st_mtime_ns == stamp
    assert not list(models.glob(".*.tmp"))


def test_vectors_from_the_copy_are_bit_identical_to_the_pt_at_fp16(models):
    fast = Esm2Encoder(weights(models), CPU, torch.float16)
    reference = from_pt(weights(models))
    assert fast.loaded_from == copy_of(models)
    ours, theirs = fast.module.state_dict(), reference.module.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == torch.float16 and torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(vectors(fast), vectors(reference))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp32_and_bf16_load_the_pt(models, dtype):
    encoder = Esm2Encoder(weights(models), CPU, dtype)
    assert encoder.loaded_from == weights(models) and not copy_of(models).exists()
    assert fp16_record(models) is None


def test_changed_source_makes_the_copy_stale_and_it_is_rewritten(models, capsys):
    Esm2Encoder(weights(models), CPU, torch.float16)
    old_record = fp16_record(models)
    change_weights(models, record_in_manifest=True)
    encoder = Esm2Encoder(weights(models), CPU, torch.float16)
    assert "derived from another esm2_tiny.pt" in capsys.readouterr().err
    assert encoder.loaded_from == copy_of(models)
    new_record = fp16_record(models)
    assert new_record["source_sha256"] == store.sha256_file(weights(models)) != old_record["source_sha256"]
    assert new_record["sha256"] == store.sha256_file(copy_of(models)) != old_record["sha256"]
    assert torch.equal(vectors(encoder), vectors(from_pt(weights(models))))


def test_unverified_source_is_loaded_but_never_copied(models, capsys):
    Esm2Encoder(weights(models), CPU, torch.float16)
    old_record = fp16_record(models)
    change_weights(models, record_in_manifest=False)  # the .pt no longer matches the manifest
    encoder = Esm2Encoder(weights(models), CPU, torch.float16)
    assert encoder.loaded_from == weights(models) and fp16_record(models) == old_record
    assert "does not match its sha256 in the manifest" in capsys.readouterr().err
    assert torch.equal(vectors(encoder), vectors(from_pt(weights(models))))


def test_corrupt_copy_is_ignored_and_rewritten(models, capsys):
    Esm2Encoder(weights(models), CPU, torch.float16)
    good = copy_of(models).read_bytes()
    corrupt = bytearray(good)
    corrupt[-3] ^= 0xFF  # one weight changed, size kept
    copy_of(models).write_bytes(bytes(corrupt))
    encoder = Esm2Encoder(weights(models), CPU, torch.float16)
    assert "(corrupt)" in capsys.readouterr().err
    assert copy_of(models).read_bytes() == good and encoder.loaded_from == copy_of(models)
    assert torch.equal(vectors(encoder), vectors(from_pt(weights(models))))


def test_busy_models_folder_loads_the_pt_and_says_so_once(models, capsys):
    with folder_held_by_another_process(models):
        for _ in range(2):
            encoder = Esm2Encoder(weights(models), CPU, torch.float16)
            assert encoder.loaded_from == weights(models)
    err = capsys.readouterr().err
    assert err.count("no fp16 copy written") == 1 and "in use by another virnucpro command" in err
    assert not copy_of(models).exists() and fp16_record(models) is None


@pytest.mark.parametrize("field, value", [("file", "../x.safetensors"), ("sha256", None), ("source_sha256", None),
                                          ("source_sha256", "0" * 63)])
def test_malformed_fp16_record_is_exit_4_naming_the_field(models, field, value):
    """Each field checked (a source_sha256 left unchecked was a traceback once the copy was used)."""
    manifest = json.loads((models / store.MANIFEST).read_text())
    manifest["models"]["esm2"]["fp16"] = {"file": "esm2_tiny.fp16.safetensors", "sha256": "0" * 64,
                                          "source_sha256": "0" * 64, field: value}
    (models / store.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(store.ModelsError) as info:
        store.read_manifest(models)
    assert info.value.code == 4 and f"models.esm2.fp16.{field}" in info.value.message


def test_models_download_step_writes_and_keeps_the_copy(models):
    """What `models download` runs after ESM-2's .pt verifies (its folder lock held)."""
    download._fp16_copy(models)  # no manifest entry under the real name: only a warning
    assert not copy_of(models).exists()
    manifest = store.read_manifest(models)
    entry = manifest["models"]["esm2"]
    entry["files"] = ["esm2_t36_3B_UR50D.pt"]
    entry["sha256"] = {"esm2_t36_3B_UR50D.pt": entry["sha256"]["esm2_tiny.pt"]}
    weights(models).rename(models / "esm2_t36_3B_UR50D.pt")
    store.write_manifest(models, manifest)
    download._fp16_copy(models)
    copy = models / "esm2_t36_3B_UR50D.fp16.safetensors"
    stamp = copy.stat().st_mtime_ns
    download._fp16_copy(models)
    assert copy.stat().st_mtime_ns == stamp
    assert store.read_manifest(models)["models"]["esm2"]["fp16"]["file"] == copy.name


@pytest.fixture
def read_only_models(tmp_path, tiny_models):
    """The tiny models on a file system mounted read-only (a shared cluster folder), when we may mount."""
    with tmpfs(tmp_path / "ro", "16m") as point:
        shutil.copytree(tiny_models, point, dirs_exist_ok=True)
        remount_read_only(point)
        yield point


def test_read_only_models_folder_loads_the_pt_with_one_message_and_exit_0(tmp_path, read_only_models,
                                                                         golden_prepared):
    out = tmp_path / "s.h5"
    done = subprocess.run([sys.executable, "-m", "virnucpro", "embed",
                           str(golden_prepared / "shards" / fmt.shard_name(0)), "--models", str(read_only_models),
                           "--out", str(out), "--device", "cpu", "--precision", "fp16", "--threads", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no fp16 copy for a fast load can be written") == 1, done.stderr
    assert f"virnucpro run FASTA --models {read_only_models} --precision fp16 --outdir OUT" in done.stderr
    assert "models download" not in done.stderr  # refused for a folder of tiny test models
    assert out.is_file() and not copy_of(read_only_models).exists()


def test_verified_copy_of_another_format_is_not_used(models, capsys):
    Esm2Encoder(weights(models), CPU, torch.float16)
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(copy_of(models))), str(copy_of(models)), metadata={"virnucpro": '{"format": "x/9"}'})
    home = store.esm2_home(weights(models))
    store.record_fp16_copy(home, store.sha256_file(copy_of(models)), store.sha256_file(weights(models)))
    encoder = Esm2Encoder(weights(models), CPU, torch.float16)
    assert encoder.loaded_from == weights(models) and "not used" in capsys.readouterr().err


def test_a_models_folder_named_in_latin1_writes_and_reads_the_copy(tmp_path, models):
    """safetensors takes UTF-8 names only: in a folder whose name is no UTF-8 the copy could not be
    written nor read (exit 4, blaming the files); it goes by a descriptor's name instead."""
    import os
    latin1 = tmp_path / os.fsdecode(b"mod\xe8les")
    shutil.copytree(models, latin1)
    fast = Esm2Encoder(weights(latin1), CPU, torch.float16)
    assert fast.loaded_from == copy_of(latin1) and fp16_record(latin1) is not None
    again = Esm2Encoder(weights(latin1), CPU, torch.float16)
    assert again.loaded_from == copy_of(latin1)
    assert torch.equal(vectors(again), vectors(from_pt(weights(models))))


def test_a_pt_written_while_its_copy_is_made_leaves_no_copy(models, monkeypatch, capsys):
    """A review's case: the .pt's bytes are read for the copy from a memory map after the verified
    load returned; a write meanwhile gave a copy of other weights, trusted for good."""
    from virnucpro.encoders import esm2

    real = esm2._checked_mapping

    def written_meanwhile(path, data):
        mapped = real(path, data)
        with open(path, "r+b") as handle:  # another process writes the file in place
            handle.seek(100)
            handle.write(handle.read(16))
        return mapped

    monkeypatch.setattr(esm2, "_checked_mapping", written_meanwhile)
    from virnucpro.errors import ModelsError

    with pytest.raises(ModelsError, match="changed after virnucpro verified it"):  # the .pt too: exit 4
        Esm2Encoder(weights(models), CPU, torch.float16)
    assert "changed while its fp16 copy was being made, so no copy was written" in capsys.readouterr().err
    assert not copy_of(models).exists() and fp16_record(models) is None


def test_a_full_disk_while_the_copy_is_written_loads_the_pt_with_one_warning(models, monkeypatch, capsys):
    """A review's case: safetensors reports ENOSPC as its own SafetensorError (no OSError): a
    traceback and exit 1, on every later fp16 task of the folder."""
    import safetensors.torch
    from safetensors import SafetensorError

    def disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    encoder = Esm2Encoder(weights(models), CPU, torch.float16)
    assert encoder.loaded_from == weights(models)
    err = capsys.readouterr().err
    assert "no fp16 copy written" in err and "No space left on device" in err, err
    assert not copy_of(models).exists() and fp16_record(models) is None and not list(models.glob(".*.tmp"))


def test_a_copy_put_in_place_but_never_recorded_is_written_again(models, capsys):
    """A review's case: a writer killed between putting the copy in place and recording it left a file
    'in the way' of every later fp16 load. Our own copy (our metadata) is replaced; a file of the
    user's at that name is still left as it is."""
    Esm2Encoder(weights(models), CPU, torch.float16)
    manifest = store.read_manifest(models)
    del manifest["models"]["esm2"]["fp16"]
    store.write_manifest(models, manifest)
    encoder = Esm2Encoder(weights(models), CPU, torch.float16)
    assert "in the way" not in capsys.readouterr().err
    assert encoder.loaded_from == copy_of(models) and fp16_record(models)["sha256"] == store.sha256_file(copy_of(models))
    manifest = store.read_manifest(models)
    del manifest["models"]["esm2"]["fp16"]
    store.write_manifest(models, manifest)
    copy_of(models).write_bytes(b"the user's own file")
    encoder = Esm2Encoder(weights(models), CPU, torch.float16)
    err = capsys.readouterr().err
    assert "in the way" in err and "move it away" in err, err
    assert copy_of(models).read_bytes() == b"the user's own file" and encoder.loaded_from == weights(models)


def test_a_stop_while_the_copy_is_written_stops_the_load_at_once(models, monkeypatch):
    """A review's case: a stop (exit 6) landing while the fp16 copy was written was taken for a failure
    to write it: the 3B .pt was then loaded, checked and compiled before the command stopped, and
    later signals were ignored meanwhile (a scheduler's grace period runs out). Same in `models download`."""
    from virnucpro.encoders import esm2
    from virnucpro.errors import InterruptedByUser

    def stopped(home):
        raise InterruptedByUser("SIGTERM received: stopped", "rerun")

    monkeypatch.setattr(esm2, "ensure_fp16_copy", stopped)
    loaded = []
    monkeypatch.setattr(esm2, "_read_checkpoint", lambda *args, **kwargs: loaded.append(args))
    with pytest.raises(InterruptedByUser):
        Esm2Encoder(weights(models), CPU, torch.float16)
    assert loaded == [], "the .pt was loaded after the stop"
    manifest = store.read_manifest(models)
    manifest["models"]["esm2"]["files"] = ["esm2_t36_3B_UR50D.pt"]
    manifest["models"]["esm2"]["sha256"] = {"esm2_t36_3B_UR50D.pt": manifest["models"]["esm2"]["sha256"]["esm2_tiny.pt"]}
    weights(models).rename(models / "esm2_t36_3B_UR50D.pt")
    store.write_manifest(models, manifest)
    with pytest.raises(InterruptedByUser):
        download._fp16_copy(models)


def test_no_room_for_the_copy_loads_the_pt_without_writing_any_of_it(models, monkeypatch, capsys):
    """A review's case: on a file system with less free space than the copy, every fp16 load wrote
    until the disk was full, then loaded the .pt; it now checks the free space first."""
    import collections
    import shutil

    import safetensors.torch

    from virnucpro.encoders import esm2

    def never(*args, **kwargs):
        raise AssertionError("the copy was written")

    Usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr(safetensors.torch, "save_file", never)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 28_000, 28_000))
    for _ in range(2):
        esm2._told.clear()
        assert Esm2Encoder(weights(models), CPU, torch.float16).loaded_from == weights(models)
        err = capsys.readouterr().err
        assert "no fp16 copy written" in err and "0.00 GB free" in err and "256 MB to spare" in err, err
    assert not copy_of(models).exists() and fp16_record(models) is None
