"""Models directory: tiny models in the real formats, locate/ensure/check, the manifest, code in
weights files, the CLI commands."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from store_fixtures import (folder_held_by_another_process, malicious_pickle_bytes, pins_matching,  # noqa: E402
                            save_malicious_torch)

from virnucpro.models import download, store  # noqa: E402
from virnucpro.models.tiny import DNABERT_SPECIAL_TOKENS, make_tiny  # noqa: E402
from virnucpro.classifier import _pickles_in, load_classifier, pickle_globals, predict_proba  # noqa: E402
from virnucpro.cli import main  # noqa: E402
from virnucpro.errors import ExitCode, ModelsError  # noqa: E402
from virnucpro.outdir import OURS  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("models") / "tiny"
    make_tiny(directory)
    return directory


def _copy(tiny: Path, tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(tiny, target)
    return target


# ------------------------------------------------------------------------- tiny: real formats

def test_tiny_is_deterministic(tiny, tmp_path):
    again = tmp_path / "again"
    make_tiny(again)
    first = json.loads((tiny / "manifest.json").read_text())
    second = json.loads((again / "manifest.json").read_text())
    assert first == second
    for role, entry in first["models"].items():
        assert entry["tiny"] is True
        for rel in entry["files"]:
            assert (tiny / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_tiny_esm2_loads_with_fair_esm_and_has_real_key_names(tiny):
    import esm
    from esm.pretrained import load_model_and_alphabet_local

    path = tiny / "esm2_tiny.pt"
    with torch.serialization.safe_globals([argparse.Namespace]):
        model, alphabet = load_model_and_alphabet_local(path)
        data = torch.load(path, map_location="cpu", weights_only=True)
        regression = torch.load(tiny / "esm2_tiny-contact-regression.pt", weights_only=True)
    cfg = data["cfg"]["model"]
    reference = esm.model.esm2.ESM2(num_layers=cfg.encoder_layers, embed_dim=cfg.encoder_embed_dim,
                                    attention_heads=cfg.encoder_attention_heads,
                                    alphabet=alphabet, token_dropout=cfg.token_dropout)
    expected = {k for k in reference.state_dict() if not k.startswith("contact_head.")}
    published = {("encoder." + k if k.startswith("lm_head.") else "encoder.sentence_encoder." + k)
                 for k in expected}
    assert set(data["model"]) == published
    assert set(regression["model"]) == {"contact_head.regression.weight",
                                        "contact_head.regression.bias"}
    _, _, tokens = alphabet.get_batch_converter()([("a", "MKTAYIAKQR"), ("b", "MKV")])
    with torch.no_grad():
        reps = model.eval()(tokens, repr_layers=[cfg.encoder_layers])["representations"]
    pooled = reps[cfg.encoder_layers][:, 1:4].mean(1)
    assert torch.isfinite(pooled).all() and not torch.allclose(pooled[0], pooled[1], atol=1e-3)


def test_tiny_dnabert_matches_reference_layout(tiny, reference_dir):
    from safetensors import safe_open
    from tokenizers import Tokenizer

    folder = tiny / "DNABERT-S-tiny"
    mine_cfg = json.loads((folder / "config.json").read_text())
    reference = reference_dir / "dnabert_s_tiny"
    ref_cfg = json.loads((reference / "config.json").read_text())
    assert set(mine_cfg) == set(ref_cfg)
    with safe_open(str(folder / "model.safetensors"), "pt") as mine, \
            safe_open(str(reference / "model.safetensors"), "pt") as ref:
        assert set(mine.keys()) == set(ref.keys())
        for key in ref.keys():  # same tiny sizes as the reference, so same shapes
            assert mine.get_slice(key).get_shape() == ref.get_slice(key).get_shape(), key
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for token_id, token in enumerate(DNABERT_SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == token_id
    encoding = tokenizer.encode("ACGTACGTAAN" + "R")
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
    assert encoding.tokens[-2] == "[UNK]"  # IUPAC letters other than N are unknown
    assert tokenizer.get_vocab_size() == mine_cfg["vocab_size"]


def test_tiny_classifiers_are_original_pickles_of_matching_width(tiny):
    width = json.loads((tiny / "DNABERT-S-tiny" / "config.json").read_text())["hidden_size"]
    with torch.serialization.safe_globals([argparse.Namespace]):
        width += torch.load(tiny / "esm2_tiny.pt", weights_only=True)["cfg"]["model"].encoder_embed_dim
    outputs = []
    for name in ("300_model_tiny.pth", "500_model_tiny.pth"):
        assert "__main__.MLPClassifier" in pickle_globals(_pickles_in(tiny / name))
        model = load_classifier(tiny / name)
        assert model.input_dim == width
        outputs.append(predict_proba(model, np.random.default_rng(0).normal(size=(50, width))))
    assert outputs[0][:, 1].std() > 0.01  # not a constant classifier
    assert not np.allclose(outputs[0], outputs[1])


# ------------------------------------------------------------------------- locate

def test_locate_tiny(tiny):
    models = store.locate(tiny)
    assert models.tiny is True
    assert models.esm2 == tiny / "esm2_tiny.pt"
    assert models.dnabert_s == tiny / "DNABERT-S-tiny"
    assert models.classifier(300) == tiny / "300_model_tiny.pth"
    assert models.classifier(500) == tiny / "500_model_tiny.pth"
    manifest = json.loads((tiny / "manifest.json").read_text())["models"]
    assert models.sha256["esm2"] == manifest["esm2"]["sha256"]["esm2_tiny.pt"]
    assert models.sha256["classifier_500"] == manifest["classifier_500"]["sha256"]["500_model_tiny.pth"]
    identity = {Path(rel).name: digest for rel, digest in manifest["dnabert_s"]["sha256"].items()
                if Path(rel).name in ("config.json", "model.safetensors", "tokenizer.json")}
    lines = "".join(f"{name}\t{identity[name]}\n" for name in sorted(identity))
    assert models.sha256["dnabert_s"] == hashlib.sha256(lines.encode()).hexdigest()
    assert models.identity()["esm2"] == {"name": "esm2_tiny", "sha256": models.sha256["esm2"]}
    with pytest.raises(ModelsError, match="chunk size 400"):
        models.classifier(400)
    only = store.locate(tiny, roles=["esm2", "dnabert_s"])
    assert set(only.paths) == {"esm2", "dnabert_s"}


def _run_models_tiny(directory: Path, capsys) -> tuple[int, str]:
    return _run_cli(["models", "tiny", str(directory)]), capsys.readouterr().err


def _snapshot(directory: Path, locks: bool = True) -> dict:
    """Every file's bytes; without `locks`, leaving out the lock file (it names its holder)."""
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and (locks or p.name not in OURS)}


def test_models_tiny_never_repoints_real_models(tiny, tmp_path, capsys):
    """A folder of real (here: non-tiny) models is refused whole, its files untouched (exit 3)."""
    real = _copy(tiny, tmp_path)
    manifest = json.loads((real / "manifest.json").read_text())
    manifest["models"]["esm2"]["tiny"] = False
    (real / "manifest.json").write_text(json.dumps(manifest))
    before = _snapshot(real)
    code, err = _run_models_tiny(real, capsys)
    assert code == int(ExitCode.BAD_INPUT) and "esm2" in err and "not tiny" in err
    assert _snapshot(real) == before


def test_models_tiny_never_writes_among_other_files(tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("MINE")
    code, err = _run_models_tiny(other, capsys)
    assert code == int(ExitCode.BAD_INPUT) and "not tiny models" in err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_models_tiny_again_on_tiny_models_or_an_empty_folder(tiny, tmp_path, capsys):
    again = _copy(tiny, tmp_path)
    assert _run_models_tiny(again, capsys)[0] == 0
    assert _snapshot(again, locks=False) == _snapshot(tiny, locks=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run_models_tiny(empty, capsys)[0] == 0 and (empty / "manifest.json").is_file()


def test_locate_hand_staged_standard_names(tiny, tmp_path, pin_to):
    """No manifest: the standard names, each file verified by its pin (here: pinned to the files)."""
    staged = _hand_staged(tiny, tmp_path / "staged")
    pin_to(staged)
    models = store.locate(staged)
    assert models.tiny is False
    assert models.esm2 == staged / "esm2_t36_3B_UR50D.pt"
    assert models.dnabert_s == staged / "DNABERT-S"
    assert models.names["esm2"] == "esm2_t36_3B_UR50D"
    # same bytes, same identity, whatever the layout
    assert models.sha256 == store.locate(tiny).sha256
    store.check(staged)  # the missing contact-regression file is only a note


def test_missing_role_names_the_fix(tiny, tmp_path):
    models = _copy(tiny, tmp_path)
    (models / "500_model_tiny.pth").unlink()
    with pytest.raises(ModelsError) as info:
        store.locate(models)
    assert info.value.code == ExitCode.MODELS
    assert "classifier_500" in str(info.value)
    # tiny test models are written again, never completed with the published classifier
    assert f"virnucpro models tiny {models}" in str(info.value) and "models download" not in str(info.value)
    store.locate(models, roles=["esm2", "dnabert_s", "classifier_300"])  # others still fine

    empty = tmp_path / "nothing-here"
    with pytest.raises(ModelsError, match=r"virnucpro models download --dest \S*nothing-here"):
        store.locate(empty)


def test_checksum_mismatch(tiny, tmp_path):
    models = _copy(tiny, tmp_path)
    path = models / "DNABERT-S-tiny" / "config.json"
    path.write_text(path.read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    with pytest.raises(ModelsError, match="checksum mismatch for dnabert_s") as info:
        store.locate(models)
    assert f"virnucpro models tiny {models}" in str(info.value)  # a tiny folder is written again
    with pytest.raises(ModelsError, match="checksum mismatch"):
        download.ensure(models, offline=False)  # never silently replaced
    with pytest.raises(ModelsError, match="checksum mismatch"):
        store.check(models)


def test_hash_cache_and_full_check(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "_CACHE_MIN_BYTES", 0)
    models = _copy(tiny, tmp_path)
    store.locate(models)
    cache = json.loads((models / store.HASH_CACHE).read_text())
    assert "esm2_tiny.pt" in cache
    # Same size and mtime, different bytes (written in place, or another file put there as
    # `rsync -a` does): the write changed the ctime (and the inode), so locate hashes again
    path = models / "esm2_tiny.pt"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ModelsError, match="checksum mismatch for esm2"):
        store.locate(models)
    with pytest.raises(ModelsError, match="checksum mismatch for esm2"):
        store.check(models)
    other = path.with_name("other.pt")
    other.write_bytes(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the original bytes again, in a new file renamed into place
    path.write_bytes(bytes(data))
    store.locate(models)
    other.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0xFF]))
    os.utime(other, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    os.replace(other, path)
    with pytest.raises(ModelsError, match="checksum mismatch for esm2"):
        store.locate(models)


def test_check_refuses_malicious_classifier(tiny, tmp_path, pin_to):
    """Even a classifier that matches its pin must pass the restricted loader."""
    staged = _hand_staged(tiny, tmp_path / "staged")
    save_malicious_torch(staged / "300_model.pth", str(tmp_path / "PWNED"))
    pin_to(staged)
    with pytest.raises(ModelsError, match="refused"):
        store.check(staged)
    assert not (tmp_path / "PWNED").exists()


def test_models_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRNUCPRO_MODELS", str(tmp_path / "env"))
    assert store.models_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert store.models_dir(None) == tmp_path / "env"
    monkeypatch.delenv("VIRNUCPRO_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert store.models_dir(None) == tmp_path / "xdg" / "virnucpro" / "models"
        monkeypatch.delenv("XDG_DATA_HOME")
        assert store.models_dir(None) == tmp_path / "home" / ".local/share/virnucpro/models"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG_DATA_HOME is Linux's")
def test_the_default_models_folder_never_depends_on_the_current_folder(tmp_path, monkeypatch):
    """A relative XDG_DATA_HOME is ignored (the XDG spec); a relative or empty HOME is exit 2:
    `models download` and `run` started in different folders would use different stores."""
    monkeypatch.delenv("VIRNUCPRO_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", "reldata")
    assert store.models_dir(None) == tmp_path / "home" / ".local/share/virnucpro/models"
    monkeypatch.delenv("XDG_DATA_HOME")
    for home in ("rel", ""):
        monkeypatch.setenv("HOME", home)
        with pytest.raises(store.ModelsPathError) as refused:
            store.models_dir(None)
        assert refused.value.code == 2 and "not an absolute path" in str(refused.value), str(refused.value)
        for given in ("~/m", "~"):  # through VIRNUCPRO_MODELS or --models alike
            with pytest.raises(store.ModelsPathError, match="cannot be determined"):
                store.models_dir(given)
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # an absolute one needs no home
        assert store.models_dir(None) == tmp_path / "xdg" / "virnucpro" / "models"
        monkeypatch.delenv("XDG_DATA_HOME")


@pytest.mark.parametrize("field", ["file", "role"])
def test_a_manifest_naming_a_file_or_role_with_control_characters_is_refused_in_one_line(tiny, tmp_path, field):
    """A file name like 'esm2\\n\\x1b[2Jtiny.pt' came out raw in `models check`: a fake line and a
    cleared screen."""
    import json
    import shutil
    folder = Path(shutil.copytree(tiny, tmp_path / "m"))
    manifest = json.loads((folder / "manifest.json").read_text())
    forged = "esm2\n\x1b[2Jtiny.pt"
    if field == "file":
        manifest["models"]["esm2"]["files"].append(forged)
    else:
        manifest["models"][forged] = manifest["models"].pop("esm2")
        manifest["models"][forged]["files"] = [1]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelsError) as refused:
        store.check(folder)
    said = str(refused.value).split("\n  fix:")[0]
    assert "esm2\\n\\x1b[2Jtiny.pt" in said and "\n" not in said and "\x1b" not in said, said


def test_ensure_offline(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert download.ensure(tiny, offline=True).tiny  # everything present: no network needed
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelsError, match=r"--offline") as info:
        download.ensure(empty, offline=True)
    assert "virnucpro models download --dest" in str(info.value)
    assert "VIRNUCPRO_MODELS" in str(info.value)
    for value in ("1", " on", "True", "yes"):  # the message quotes the value as the user set it
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        with pytest.raises(ModelsError, match=f"not downloading \\(HF_HUB_OFFLINE={value.strip()}\\)"):
            download.ensure(empty, offline=False)
    models = _copy(tiny, tmp_path)
    (models / "300_model_tiny.pth").unlink()
    with pytest.raises(ModelsError, match="tiny test models .* are incomplete") as info:  # offline or not
        download.ensure(models, offline=True)
    assert f"virnucpro models tiny {models}" in str(info.value)
    assert download.ensure(models, roles=["esm2", "classifier_500"], offline=False).paths


# ------------------------------------------------------------------------- CLI

def _run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


def test_cli_tiny_then_check(tmp_path, capsys):
    assert _run_cli(["models", "tiny", str(tmp_path / "m")]) == 0
    assert _run_cli(["models", "check", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "all models present and verified" in err and "tiny" in err


def test_cli_check_missing_exits_4(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _run_cli(["models", "check", str(tmp_path / "empty")]) == ExitCode.MODELS
    err = capsys.readouterr().err
    assert "virnucpro models download --dest" in err
    assert "esm2" in err and "classifier_300" in err


# ------------------------------------------------------------------------- malformed manifest (issue 9, point 11)

def _set(path: list, value):
    def mutate(manifest: dict) -> object:
        if not path:
            return value
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return manifest
    return mutate


@pytest.mark.parametrize(("mutate", "field"), [
    (_set(["models", "esm2", "sha256"], ["0" * 64]), "models.esm2.sha256"),
    (_set(["models", "esm2", "sha256", "esm2_tiny.pt"], 5), "models.esm2.sha256.esm2_tiny.pt"),
    (_set(["models", "esm2", "sha256", "esm2_tiny.pt"], "not-a-hash"), "models.esm2.sha256.esm2_tiny.pt"),
    (_set(["models", "dnabert_s", "files"], "DNABERT-S-tiny/config.json"), "models.dnabert_s.files"),
    (_set(["models", "dnabert_s", "files"], []), "models.dnabert_s.files"),
    (_set(["models", "classifier_300", "tiny"], "yes"), "models.classifier_300.tiny"),
    (_set(["models", "classifier_500", "urls"], ["http://x"]), "models.classifier_500.urls"),
    (_set(["models", "esm2", "name"], 3), "models.esm2.name"),
    (_set(["models", "esm2"], ["esm2_tiny.pt"]), "models.esm2"),
    (_set(["models"], []), "models"),
    (_set([], ["models"]), "(top level)"),
    (_set(["models", "classifier_300", "files"], ["x" * 5000]), "models.classifier_300.files"),
    (_set(["models", "classifier_300", "files"], ["a\0b.pth"]), "models.classifier_300.files"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_malformed_manifest_is_exit_4_naming_file_and_field(tiny, tmp_path, capsys, mutate, field):
    models = _copy(tiny, tmp_path)
    path = models / "manifest.json"
    path.write_text(json.dumps(mutate(json.loads(path.read_text()))))
    code = _run_cli(["models", "check", str(models)])
    err = capsys.readouterr().err
    assert code == ExitCode.MODELS, err
    assert str(path) in err and f"`{field}`" in err and "bug" not in err
    with pytest.raises(ModelsError, match=f"`{re.escape(field)}`"):
        store.locate(models)


def test_a_manifest_nested_too_deeply_is_exit_4(tiny, tmp_path, capsys):
    """Review point 4: 100,000 nested `[` were a RecursionError (exit 1, "bug"); a hash cache
    like it is just ignored."""
    models = _copy(tiny, tmp_path)
    (models / store.HASH_CACHE).write_text("[" * 100_000)
    assert _run_cli(["models", "check", str(models)]) == 0
    (models / "manifest.json").write_text("[" * 100_000)
    code = _run_cli(["models", "check", str(models)])
    err = capsys.readouterr().err
    assert code == ExitCode.MODELS and str(models / "manifest.json") in err and "nested too deeply" in err, err
    assert "bug" not in err


def _without_permission_bypass() -> list[str]:
    """A command prefix that runs without root's permission bypass (none needed as another user)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: file permissions are not enforced")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def test_an_unreadable_model_file_is_exit_4_naming_it_not_a_failed_write(tiny, tmp_path):
    """Review point 4: an OSError from reading a model escaped to the CLI, which maps permission
    and I/O errors to exit 10 "cannot write"; reading models is exit 4 naming the file."""
    import subprocess

    prefix = _without_permission_bypass()
    models = _copy(tiny, tmp_path)
    staged = tmp_path / "staged"  # published models go into a folder without tiny ones
    staged.mkdir()
    shutil.copy(models / "300_model_tiny.pth", staged / "300_model.pth")  # where a download goes
    for path in (models / "300_model_tiny.pth", staged / "300_model.pth"):
        path.chmod(0)
    for unreadable, args in ((models / "300_model_tiny.pth", ["models", "check", str(models)]),
                             (staged / "300_model.pth", ["models", "download", "--dest", str(staged),
                                                         "--only", "classifier_300", "--mirror",
                                                         "http://127.0.0.1:9"])):
        done = subprocess.run([*prefix, sys.executable, "-m", "virnucpro", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == ExitCode.MODELS, done.stderr
        assert f"cannot read {unreadable}: Permission denied" in done.stderr, done.stderr
        assert "cannot write" not in done.stderr and "bug" not in done.stderr


# ------------------------------------------------------------------------- code in weights files (issue 9, point 13)

REFUSED = "refused: it holds objects other than tensors"


def _plant(models: Path, role: str, rel: str, write) -> Path:
    """Replace (or add) one file of a role and make the manifest vouch for it, as a careless or
    hostile source would: only the refusal of code can stop it."""
    write(models / rel)
    manifest = json.loads((models / "manifest.json").read_text())
    entry = manifest["models"][role]
    entry["files"] = list(dict.fromkeys(entry["files"] + [rel]))
    entry["sha256"][rel] = hashlib.sha256((models / rel).read_bytes()).hexdigest()
    (models / "manifest.json").write_text(json.dumps(manifest))
    return models / rel


def _malicious(kind: str, marker: Path):
    def write(path: Path) -> None:
        if kind in ("zip", "legacy"):
            save_malicious_torch(path, str(marker), legacy=kind == "legacy")
        else:
            path.write_bytes(malicious_pickle_bytes(str(marker), protocol=int(kind[-1])))
    return write


@pytest.mark.parametrize(("role", "rel", "kind"), [
    ("esm2", "esm2_tiny.pt", "zip"),
    ("esm2", "esm2_tiny.pt", "legacy"),
    ("esm2", "esm2_tiny.pt", "pickle2"),
    ("esm2", "esm2_tiny.pt", "pickle4"),
    ("esm2", "esm2_tiny-contact-regression.pt", "zip"),
    ("dnabert_s", "DNABERT-S-tiny/pytorch_model.bin", "legacy"),
])
def test_code_in_an_encoder_checkpoint_is_refused(tiny, tmp_path, capsys, role, rel, kind):
    marker = tmp_path / "PWNED"
    models = _copy(tiny, tmp_path)
    evil = _plant(models, role, rel, _malicious(kind, marker))
    code = _run_cli(["models", "check", str(models)])
    err = capsys.readouterr().err
    assert code == ExitCode.MODELS and REFUSED in err and str(evil) in err and "system" in err, err
    assert "weights_only" not in err
    with pytest.raises(ModelsError, match=REFUSED):
        store.locate(models, roles=[role])
    with pytest.raises(ModelsError, match=REFUSED):
        download.ensure(models, roles=[role], offline=True)
    assert not marker.exists()


def test_embed_refuses_code_in_weights_before_loading_anything(tiny, tmp_path, golden_prepared, run_cli):
    marker = tmp_path / "PWNED"
    models = _copy(tiny, tmp_path)
    evil = _plant(models, "esm2", "esm2_tiny.pt", _malicious("zip", marker))
    code, message = run_cli("embed", golden_prepared / "shards" / "shard_00000.tsv", "--models", models,
                            "--out", tmp_path / "s.h5", "--device", "cpu")
    assert code == ExitCode.MODELS and REFUSED in message and str(evil) in message, message
    assert "weights_only" not in message and not marker.exists()


def test_tensors_only_checkpoints_pass_in_either_torch_format(tiny, tmp_path):
    models = _copy(tiny, tmp_path)
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(tiny / "esm2_tiny.pt", weights_only=True)
    _plant(models, "esm2", "esm2_tiny.pt",
           lambda path: torch.save(data, path, _use_new_zipfile_serialization=False))
    state = {"w": torch.ones(3), "n": torch.tensor(2)}
    _plant(models, "dnabert_s", "DNABERT-S-tiny/pytorch_model.bin", lambda path: torch.save(state, path))
    store.locate(models)
    assert store.code_in_weights(models / "esm2_tiny.pt") == []


def test_unreadable_checkpoint_is_exit_4_not_a_crash(tiny, tmp_path):
    models = _copy(tiny, tmp_path)
    broken = bytearray((tiny / "esm2_tiny.pt").read_bytes())
    broken[-100] ^= 0xFF  # the zip's own directory
    _plant(models, "esm2", "esm2_tiny.pt", lambda path: path.write_bytes(bytes(broken)))
    with pytest.raises(ModelsError, match="not a readable torch checkpoint"):
        store.locate(models)


# ------------------------------------------------------------------------- the folder lock (issue 9, points 1 and 17)

def test_models_tiny_holds_the_folder_lock(tmp_path, capsys):
    folder = tmp_path / "m"
    with folder_held_by_another_process(folder) as pid:
        code, err = _run_models_tiny(folder, capsys)
        assert code == ExitCode.BAD_INPUT and "in use" in err and f"pid {pid}" in err, err
        assert not (folder / "manifest.json").exists()
    assert _run_models_tiny(folder, capsys)[0] == 0


# ------------------------------------------------------------------------- pins of models that are not tiny (issue 9, points 15/16)

NOT_PUBLISHED = "is not the published model"


@pytest.fixture
def pin_to(monkeypatch):
    """Pin the published models to the files of a folder: a stand-in for the real bytes."""
    def pin(directory: Path) -> None:
        from virnucpro.models import pins

        monkeypatch.setattr(pins, "SOURCES", pins_matching(directory))
    return pin


def _hand_staged(tiny: Path, target: Path) -> Path:
    """The tiny models copied under the published file names, with no manifest."""
    (target / "DNABERT-S").mkdir(parents=True)
    shutil.copy(tiny / "esm2_tiny.pt", target / "esm2_t36_3B_UR50D.pt")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(tiny / "DNABERT-S-tiny" / name, target / "DNABERT-S" / name)
    shutil.copy(tiny / "300_model_tiny.pth", target / "300_model.pth")
    shutil.copy(tiny / "500_model_tiny.pth", target / "500_model.pth")
    return target


def _edit_manifest(models: Path, edit) -> None:
    manifest = json.loads((models / "manifest.json").read_text())
    edit(manifest["models"])
    (models / "manifest.json").write_text(json.dumps(manifest))


def _mark(models: Path, roles, tiny: bool) -> None:
    def edit(entries):
        for role in roles:
            entries[role]["tiny"] = tiny
    _edit_manifest(models, edit)


def test_tiny_models_whose_manifest_says_not_tiny_are_refused_by_check_and_run(tiny, tmp_path, run_cli,
                                                                              reference_dir):
    """`models tiny M; cp -r M TM`, every "tiny" set to false: not the published models (exit 4),
    so no run can report random models as real ones."""
    models = _copy(tiny, tmp_path)
    _mark(models, store.ROLES, tiny=False)
    code, err = run_cli("models", "check", models)
    assert code == ExitCode.MODELS, err
    assert "all models present and verified" not in err
    assert f"{models / 'esm2_tiny.pt'} {NOT_PUBLISHED}" in err
    assert "virnucpro models download" in err and "virnucpro models tiny" in err
    out = tmp_path / "out"
    code, err = run_cli("run", reference_dir / "golden" / "mixed.fa", "--outdir", out, "--models", models,
                        "--offline")
    assert code == ExitCode.MODELS and NOT_PUBLISHED in err, err
    assert not list(out.glob("prediction_results*"))


@pytest.mark.parametrize("role", store.ROLES)
def test_one_role_marked_not_tiny_is_checked_against_its_pins(tiny, tmp_path, role):
    models = _copy(tiny, tmp_path)
    _mark(models, [role], tiny=False)
    with pytest.raises(ModelsError, match=NOT_PUBLISHED) as info:
        store.locate(models)
    first = json.loads((models / "manifest.json").read_text())["models"][role]["files"][0]
    assert info.value.code == ExitCode.MODELS and str(models / first) in str(info.value)
    assert f"--only {role}" in str(info.value)


def test_hand_staged_tiny_files_under_the_published_names_are_refused(tiny, tmp_path, run_cli):
    """No manifest: every file is compared with its pin, never listed as "unrecorded" and passed."""
    staged = _hand_staged(tiny, tmp_path / "staged")
    code, err = run_cli("models", "check", staged)
    assert code == ExitCode.MODELS, err
    assert "unrecorded" not in err and "all models present and verified" not in err
    for rel in ("esm2_t36_3B_UR50D.pt", "DNABERT-S/config.json", "300_model.pth", "500_model.pth"):
        assert f"{staged / rel} {NOT_PUBLISHED}" in err
    assert (f"{staged / 'DNABERT-S/model.safetensors'} {NOT_PUBLISHED}: the published dnabert_s model has "
            f"no file of that name") in err
    with pytest.raises(ModelsError, match=NOT_PUBLISHED):
        download.ensure(staged, offline=True)


def test_hand_staged_files_that_match_their_pins_count_as_verified(tiny, tmp_path, run_cli, pin_to):
    staged = _hand_staged(tiny, tmp_path / "staged")
    pin_to(staged)
    code, err = run_cli("models", "check", staged)
    assert code == 0 and "all models present and verified" in err, err
    assert "unrecorded" not in err and err.count("(verified: pin)") == 6
    models = store.locate(staged)
    assert models.tiny is False and models.sha256 == store.locate(tiny).sha256


def test_downloaded_files_must_match_both_the_manifest_and_the_pins(tiny, tmp_path, pin_to):
    """A manifest entry that is not tiny, whose records match the files, still needs the pins."""
    staged = _hand_staged(tiny, tmp_path / "staged")
    _write_manifest_of_staged(staged, tiny=False)
    with pytest.raises(ModelsError, match=NOT_PUBLISHED):
        store.locate(staged)
    pin_to(staged)
    assert store.locate(staged).tiny is False


def test_a_weights_file_the_manifest_does_not_list_is_checked_too(tiny, tmp_path, pin_to):
    """DNABERT-S loads model.safetensors before pytorch_model.bin: one dropped next to the listed,
    pinned .bin would be used unchecked."""
    staged = _hand_staged(tiny, tmp_path / "staged")
    from safetensors.torch import load_file

    folder = staged / "DNABERT-S"
    torch.save(load_file(str(folder / "model.safetensors")), str(folder / "pytorch_model.bin"))
    (folder / "model.safetensors").unlink()
    pin_to(staged)
    store.locate(staged)
    shutil.copy(tiny / "DNABERT-S-tiny" / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelsError, match="model.safetensors is not the published model"):
        store.locate(staged)


def test_a_tiny_role_must_record_every_file_it_reads(tiny, tmp_path):
    """Marked tiny but a file unrecorded: nothing vouches for it, so the pins apply (and fail)."""
    models = _copy(tiny, tmp_path)
    _edit_manifest(models, lambda entries: entries["classifier_300"]["sha256"].clear())
    with pytest.raises(ModelsError, match=NOT_PUBLISHED) as info:
        store.locate(models)
    assert "classifier_300 is marked tiny, but the manifest records no sha256 for 300_model_tiny.pth" \
        in str(info.value)


def test_published_models_marked_tiny_are_used_but_every_output_says_tiny(tiny, tmp_path, pin_to):
    """The reverse is harmless: a tiny mark on the published files only makes outputs say "tiny"."""
    staged = _hand_staged(tiny, tmp_path / "staged")
    pin_to(staged)
    _write_manifest_of_staged(staged, tiny=True)
    assert store.locate(staged).tiny is True
    _mark(staged, ["esm2", "dnabert_s", "classifier_300"], tiny=False)
    assert store.locate(staged, roles=["esm2", "dnabert_s", "classifier_300"]).tiny is False
    assert store.locate(staged).tiny is True  # classifier_500 is still marked tiny


STAGED_FILES = {"esm2": ["esm2_t36_3B_UR50D.pt"],
                "dnabert_s": ["DNABERT-S/config.json", "DNABERT-S/model.safetensors", "DNABERT-S/tokenizer.json"],
                "classifier_300": ["300_model.pth"], "classifier_500": ["500_model.pth"]}


def _write_manifest_of_staged(staged: Path, tiny: bool) -> None:
    """A manifest recording the hand-staged files as they are, every role marked `tiny`."""
    store.write_manifest(staged, {"models": {
        role: {"files": files, "tiny": tiny, "sha256": {rel: store.sha256_file(staged / rel) for rel in files}}
        for role, files in STAGED_FILES.items()}})


def test_pin_checks_reuse_the_hash_cache(tiny, tmp_path, pin_to, monkeypatch):
    """A git blob id is cached beside the sha256 by the file's stat stamp: locate reads a file
    once; `models check` always hashes again."""
    monkeypatch.setattr(store, "_CACHE_MIN_BYTES", 0)
    staged = _hand_staged(tiny, tmp_path / "staged")
    pin_to(staged)
    store.locate(staged)
    cache = json.loads((staged / store.HASH_CACHE).read_text())
    assert cache["300_model.pth"]["git_sha1"] == pins_matching(staged)["classifier_300"].files[0].git_sha1
    path = staged / "300_model.pth"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF  # same size, same mtime, other bytes
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ModelsError, match=f"{path} {NOT_PUBLISHED}"):
        store.locate(staged)
    with pytest.raises(ModelsError, match=f"{path} {NOT_PUBLISHED}"):
        store.check(staged)
