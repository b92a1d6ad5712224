"""`models download` against a local HTTP server on 127.0.0.1 — never a real host.

The real pins (`virnucpro.models.pins.SOURCES`, read by both `download` and `store`) are replaced
by the hashes of the files served here; every test file is pinned, as every real one is.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mount_helpers import remount_read_only, tmpfs

sys.path.insert(0, str(Path(__file__).parent))
from store_fixtures import (FakeHost, closed_port_url, folder_held_by_another_process,  # noqa: E402
                            git_blob_sha1, save_malicious_torch, sha256)

from virnucpro.errors import BadInputError, ExitCode, ModelsError, UsageError  # noqa: E402
from virnucpro.models import download as dl  # noqa: E402
from virnucpro.models import pins as model_pins  # noqa: E402
from virnucpro.models import store  # noqa: E402
from virnucpro.models.tiny import make_tiny  # noqa: E402

NOWHERE = "https://origin.invalid"  # every test reaches the server through --mirror or a patch


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(dl, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(dl, "TIMEOUT_SECONDS", 10.0)


@pytest.fixture(autouse=True)
def local_host_without_proxy(monkeypatch):
    """The fake host is on 127.0.0.1: a proxy set for the package registries must not be asked for it."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def host():
    server = FakeHost()
    yield server
    server.close()


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> dict[str, bytes]:
    """Real-format files (the tiny models) to serve under the real remote paths."""
    tiny = tmp_path_factory.mktemp("payload") / "tiny"
    make_tiny(tiny)
    files = {
        "esm.pt": (tiny / "esm2_tiny.pt").read_bytes(),
        "esm-reg.pt": (tiny / "esm2_tiny-contact-regression.pt").read_bytes(),
        "c300": (tiny / "300_model_tiny.pth").read_bytes(),
        "c500": (tiny / "500_model_tiny.pth").read_bytes(),
    }
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        files[name] = (tiny / "DNABERT-S-tiny" / name).read_bytes()
    evil = tmp_path_factory.mktemp("evil") / "evil.pth"
    marker = evil.parent / "PWNED"
    save_malicious_torch(evil, str(marker))
    files["evil"] = evil.read_bytes()
    files["evil-marker"] = str(marker).encode()
    return files


def fake_sources(payloads, base: str = NOWHERE, **overrides) -> dict[str, dl.RoleSource]:
    """SOURCES shaped like the real table, with pins computed from the served payloads."""
    def spec(rel, path, **pins):
        return dl.FileSource(rel, base, path, **pins)

    hf = "zhihan1996/DNABERT-S/resolve/rev"
    sources = {
        "esm2": dl.RoleSource("esm2", "esm2_t36_3B_UR50D", base, None, (
            spec("esm2_t36_3B_UR50D.pt", "fair-esm/models/esm2_t36_3B_UR50D.pt",
                 sha256=sha256(payloads["esm.pt"])),
            spec("esm2_t36_3B_UR50D-contact-regression.pt",
                 "fair-esm/regression/esm2_t36_3B_UR50D-contact-regression.pt",
                 sha256=sha256(payloads["esm-reg.pt"])))),
        "dnabert_s": dl.RoleSource("dnabert_s", "zhihan1996/DNABERT-S", base, "rev", tuple(
            spec(f"DNABERT-S/{name}", f"{hf}/{name}", sha256=sha256(payloads[name]))
            for name in ("config.json", "model.safetensors", "tokenizer.json"))),
        "classifier_300": dl.RoleSource("classifier_300", "300_model.pth", base, "commit", (
            spec("300_model.pth", "VirNucPro/commit/300_model.pth",
                 git_sha1=git_blob_sha1(payloads["c300"])),)),
        "classifier_500": dl.RoleSource("classifier_500", "500_model.pth", base, "commit", (
            spec("500_model.pth", "VirNucPro/commit/500_model.pth",
                 git_sha1=git_blob_sha1(payloads["c500"])),)),
    }
    sources.update(overrides)
    return sources


def serve_all(host: FakeHost, payloads) -> None:
    hf = "/zhihan1996/DNABERT-S/resolve/rev"
    host.files.update({
        "/fair-esm/models/esm2_t36_3B_UR50D.pt": payloads["esm.pt"],
        "/fair-esm/regression/esm2_t36_3B_UR50D-contact-regression.pt": payloads["esm-reg.pt"],
        f"{hf}/config.json": payloads["config.json"],
        f"{hf}/model.safetensors": payloads["model.safetensors"],
        f"{hf}/tokenizer.json": payloads["tokenizer.json"],
        "/VirNucPro/commit/300_model.pth": payloads["c300"],
        "/VirNucPro/commit/500_model.pth": payloads["c500"],
    })


def _manifest(directory: Path) -> dict:
    path = directory / "manifest.json"
    return json.loads(path.read_text())["models"] if path.exists() else {}


def _nothing_recorded(directory: Path, role: str, rel: str) -> None:
    """No file, no partial file and no manifest entry: nothing of a refused download remains."""
    assert role not in _manifest(directory)
    assert not (directory / rel).exists() and not (directory / f"{rel}.part").exists()


def test_real_sources_have_urls():
    """The shipped table: every file has a URL, the revisions are commits, --mirror keeps paths."""
    assert set(model_pins.SOURCES) == set(store.ROLES)
    assert len(model_pins.DNABERT_S_REVISION) == 40 and len(model_pins.VIRNUCPRO_COMMIT) == 40
    for source in model_pins.SOURCES.values():
        for spec in source.files:
            assert dl._url(spec, None).startswith("https://")
            assert dl._url(spec, "http://mirror.example/x/") == f"http://mirror.example/x/{spec.path}"
    names = {Path(s.relpath).name for s in model_pins.SOURCES["dnabert_s"].files}
    assert {"config.json", "tokenizer.json"} <= names and names & set(store.DNABERT_WEIGHTS)


def test_download_everything_through_mirror(host, payloads, tmp_path, monkeypatch):
    serve_all(host, payloads)
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    dest = tmp_path / "models"
    dl.download(dest=dest, only=None, mirror=host.url + "/")
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    entry = manifest["models"]["esm2"]
    assert entry["tiny"] is False and entry["source"] == host.url
    assert entry["sha256"]["esm2_t36_3B_UR50D.pt"] == sha256(payloads["esm.pt"])
    assert entry["urls"]["esm2_t36_3B_UR50D.pt"].startswith(host.url + "/fair-esm/")
    models = store.locate(dest)
    assert models.tiny is False
    assert models.dnabert_s == dest / "DNABERT-S"
    assert models.sha256["classifier_300"] == sha256(payloads["c300"])
    assert not list(dest.rglob("*.part"))
    store.check(dest)

    # A second run finds everything verified and transfers nothing.
    before = len(host.requests)
    dl.download(dest=dest, only=None, mirror=host.url)
    assert len(host.requests) == before


def test_only_one_role(host, payloads, tmp_path, monkeypatch):
    serve_all(host, payloads)
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    dl.download(dest=tmp_path, only="classifier_500", mirror=host.url)
    assert (tmp_path / "500_model.pth").is_file() and not (tmp_path / "300_model.pth").exists()
    assert list(_manifest(tmp_path)) == ["classifier_500"]
    with pytest.raises(UsageError, match="unknown model") as info:  # exit 2, as typer's own check
        dl.download(dest=tmp_path, only="esm3", mirror=host.url)
    assert info.value.code == ExitCode.USAGE
    with pytest.raises(UsageError, match="http") as info:  # a bad option value: exit 2
        dl.download(dest=tmp_path, only="esm2", mirror="ftp://somewhere")
    assert info.value.code == ExitCode.USAGE


def test_pinned_checksum_mismatch(host, payloads, tmp_path, monkeypatch):
    serve_all(host, payloads)
    host.files["/VirNucPro/commit/300_model.pth"] = payloads["c500"]  # wrong file at that path
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    with pytest.raises(ModelsError, match=r"classifier_300 .* checksum mismatch") as info:
        dl.download(dest=tmp_path, only="classifier_300", mirror=host.url)
    assert info.value.code == ExitCode.MODELS
    assert "git blob" in str(info.value)
    _nothing_recorded(tmp_path, "classifier_300", "300_model.pth")


@pytest.mark.parametrize("rel", ["esm2_t36_3B_UR50D.pt", "esm2_t36_3B_UR50D-contact-regression.pt"])
def test_a_mirror_serving_other_bytes_is_refused(host, payloads, tmp_path, monkeypatch, run_cli, rel):
    """Issue 9, point 15: only the pinned bytes are accepted, whatever the mirror says about them."""
    serve_all(host, payloads)
    path = "/fair-esm/" + ("models/" if rel.endswith("UR50D.pt") else "regression/") + rel
    other = payloads["c500"]  # a valid torch file, just not the pinned one
    host.files[path] = other
    host.headers[path] = {"X-Repo-Commit": "rev", "ETag": f'"{sha256(other)}"',
                          "X-Linked-Etag": f'"{sha256(other)}"'}  # the mirror vouches for it
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    code, message = run_cli("models", "download", "--dest", tmp_path, "--only", "esm2", "--mirror", host.url)
    assert code == ExitCode.MODELS, message
    assert "checksum mismatch" in message and sha256(other) in message and "nothing recorded" in message
    assert "esm2" not in _manifest(tmp_path) and not list(tmp_path.glob("*.part"))
    assert not (tmp_path / rel).exists()


def test_interrupted_transfer_is_resumed(host, payloads, tmp_path):
    data = payloads["esm.pt"]
    host.files["/big"] = data
    host.drop_once.add("/big")
    digest = dl.fetch(host.url + "/big", tmp_path / "big.pt", sha256=sha256(data))
    assert digest == sha256(data)
    assert (tmp_path / "big.pt").read_bytes() == data
    ranged = host.ranged_requests("/big")
    assert len(ranged) == 1 and ranged[0] == f"bytes={len(data) // 2}-"


def test_interrupted_download_resumes_on_the_next_run(host, payloads, tmp_path, monkeypatch):
    serve_all(host, payloads)
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    monkeypatch.setattr(dl, "ATTEMPTS", 1)
    path = "/fair-esm/models/esm2_t36_3B_UR50D.pt"
    host.drop_once.add(path)
    with pytest.raises(ModelsError, match="rerun the same command to resume"):
        dl.download(dest=tmp_path, only="esm2", mirror=host.url)
    part = tmp_path / "esm2_t36_3B_UR50D.pt.part"
    assert part.is_file() and 0 < part.stat().st_size < len(payloads["esm.pt"])
    assert not (tmp_path / "esm2_t36_3B_UR50D.pt").exists()
    dl.download(dest=tmp_path, only="esm2", mirror=host.url)
    assert (tmp_path / "esm2_t36_3B_UR50D.pt").read_bytes() == payloads["esm.pt"]
    assert host.ranged_requests(path) == [f"bytes={len(payloads['esm.pt']) // 2}-"]


def test_server_ignoring_range_restarts_cleanly(host, payloads, tmp_path):
    data = payloads["esm.pt"]
    host.files["/big"] = data
    host.drop_once.add("/big")
    host.no_range.add("/big")
    dl.fetch(host.url + "/big", tmp_path / "big.pt", sha256=sha256(data))
    assert (tmp_path / "big.pt").read_bytes() == data


def test_stale_partial_file_is_discarded_after_mismatch(host, payloads, tmp_path):
    data = payloads["c300"]
    host.files["/c"] = data
    (tmp_path / "c.pth.part").write_bytes(b"garbage from another file" * 10)
    dl.fetch(host.url + "/c", tmp_path / "c.pth", git_sha1=git_blob_sha1(data))
    assert (tmp_path / "c.pth").read_bytes() == data


def test_server_errors(host, payloads, tmp_path):
    data = payloads["config.json"]
    pin = {"sha256": sha256(data)}
    host.files["/flaky"] = data
    host.errors["/flaky"] = 2  # two 503s, then the file
    dl.fetch(host.url + "/flaky", tmp_path / "flaky", **pin)
    host.files["/down"] = data
    host.errors["/down"] = 1000
    with pytest.raises(ModelsError, match="HTTP 503") as info:
        dl.fetch(host.url + "/down", tmp_path / "down", **pin)
    assert f"after {dl.ATTEMPTS} attempts" in str(info.value)
    assert sum(1 for p, _ in host.requests if p == "/down") == dl.ATTEMPTS
    with pytest.raises(ModelsError, match="HTTP 404"):
        dl.fetch(host.url + "/absent", tmp_path / "absent", **pin)
    assert sum(1 for p, _ in host.requests if p == "/absent") == 1  # no retry on 4xx


def test_a_file_without_a_pin_is_never_downloaded_or_recorded(host, payloads, tmp_path, monkeypatch):
    serve_all(host, payloads)
    sources = fake_sources(payloads)
    unpinned = dl.FileSource("300_model.pth", NOWHERE, "VirNucPro/commit/300_model.pth")
    sources["classifier_300"] = dl.RoleSource("classifier_300", "300_model.pth", NOWHERE, "commit", (unpinned,))
    monkeypatch.setattr(model_pins, "SOURCES", sources)
    with pytest.raises(ModelsError, match="no pinned checksum") as info:
        dl.download(dest=tmp_path, only="classifier_300", mirror=host.url)
    assert info.value.code == ExitCode.MODELS and not host.requests
    _nothing_recorded(tmp_path, "classifier_300", "300_model.pth")
    (tmp_path / "300_model.pth").write_bytes(payloads["c300"])  # present, but nothing vouches for it
    with pytest.raises(ModelsError, match="no pinned checksum"):
        dl.download(dest=tmp_path, only="classifier_300", mirror=host.url)
    assert "classifier_300" not in _manifest(tmp_path)


def test_offline_connection_refused(payloads, tmp_path, monkeypatch):
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    with pytest.raises(ModelsError, match=r"cannot reach the mirror 127\.0\.0\.1:\d+") as info:
        dl.download(dest=tmp_path / "m", only="classifier_300", mirror=closed_port_url())
    assert info.value.code == ExitCode.MODELS
    assert "virnucpro models download --dest" in str(info.value)
    assert not (tmp_path / "m" / "300_model.pth").exists()


def test_a_failed_download_leaves_no_empty_folder_nor_lock(payloads, tmp_path, monkeypatch):
    """An unreachable host: the DNABERT-S/ folder the download created and, in a new models folder,
    its lock file and the folder itself are taken back (an existing folder stays, empty)."""
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    existing = tmp_path / "existing"
    existing.mkdir()
    for dest in (tmp_path / "new", existing):
        with pytest.raises(ModelsError, match="cannot reach"):
            dl.download(dest=dest, only="dnabert_s", mirror=closed_port_url())
    assert not (tmp_path / "new").exists()
    assert existing.is_dir() and not any(existing.iterdir())


def test_downloaded_classifier_must_pass_the_restricted_loader(host, payloads, tmp_path, monkeypatch):
    evil = payloads["evil"]
    host.files["/VirNucPro/commit/300_model.pth"] = evil
    sources = fake_sources(payloads)
    sources["classifier_300"] = dl.RoleSource("classifier_300", "300_model.pth", NOWHERE, "commit", (
        dl.FileSource("300_model.pth", NOWHERE, "VirNucPro/commit/300_model.pth",
                      git_sha1=git_blob_sha1(evil)),))  # the checksum even matches
    monkeypatch.setattr(model_pins, "SOURCES", sources)
    with pytest.raises(ModelsError, match="refused: it holds objects other than tensors") as info:
        dl.download(dest=tmp_path, only="classifier_300", mirror=host.url)
    assert "300_model.pth" in str(info.value) and "weights_only" not in str(info.value)
    _nothing_recorded(tmp_path, "classifier_300", "300_model.pth")
    assert not Path(payloads["evil-marker"].decode()).exists()


def test_downloaded_encoder_checkpoint_must_hold_only_tensors(host, payloads, tmp_path, monkeypatch):
    """Issue 9, point 13: even a pinned ESM-2 file that holds code is refused before the rename."""
    evil = payloads["evil"]
    serve_all(host, payloads)
    host.files["/fair-esm/models/esm2_t36_3B_UR50D.pt"] = evil
    sources = fake_sources(payloads)
    weights, regression = sources["esm2"].files
    sources["esm2"] = dl.RoleSource("esm2", "esm2_t36_3B_UR50D", NOWHERE, None, (
        dl.FileSource(weights.relpath, NOWHERE, weights.path, sha256=sha256(evil)), regression))
    monkeypatch.setattr(model_pins, "SOURCES", sources)
    with pytest.raises(ModelsError, match="refused: it holds objects other than tensors") as info:
        dl.download(dest=tmp_path, only="esm2", mirror=host.url)
    assert "esm2_t36_3B_UR50D.pt" in str(info.value) and "system" in str(info.value)
    _nothing_recorded(tmp_path, "esm2", "esm2_t36_3B_UR50D.pt")
    assert not Path(payloads["evil-marker"].decode()).exists()


def test_ensure_downloads_only_missing_roles(host, payloads, tmp_path, monkeypatch):
    serve_all(host, payloads)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads, base=host.url))
    dest = tmp_path / "models"
    dl.download(dest=dest, only="esm2", mirror=None)
    host.requests.clear()
    models = dl.ensure(dest, offline=False)
    assert set(models.paths) == set(store.ROLES)
    assert not any(p.startswith("/fair-esm/") for p, _ in host.requests)


def test_a_second_download_into_a_held_folder_exits_3_at_once(host, payloads, tmp_path, monkeypatch):
    """Issue 9, points 1 and 17: one command writes a models folder; the second names the first."""
    serve_all(host, payloads)
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    with folder_held_by_another_process(tmp_path) as pid:
        with pytest.raises(BadInputError, match=f"in use by another virnucpro command \\(pid {pid}") as info:
            dl.download(dest=tmp_path, only="classifier_500", mirror=host.url)
        assert info.value.code == ExitCode.BAD_INPUT and not host.requests
    dl.download(dest=tmp_path, only="classifier_500", mirror=host.url)
    assert (tmp_path / "500_model.pth").is_file()


def test_models_download_cli_holds_the_lock_in_a_real_process(host, payloads, tmp_path, monkeypatch):
    """The command line, in its own process, against a folder another process holds."""
    serve_all(host, payloads)
    with folder_held_by_another_process(tmp_path) as pid:
        result = subprocess.run([sys.executable, "-m", "virnucpro", "models", "download", "--dest",
                                 str(tmp_path), "--only", "classifier_500", "--mirror", host.url],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert f"pid {pid}" in result.stderr and not host.requests


def test_bad_files_virnucpro_wrote_are_downloaded_again(host, payloads, tmp_path, monkeypatch, capsys):
    """Our own download, since corrupted (the manifest records it), is replaced."""
    serve_all(host, payloads)
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    dl.download(dest=tmp_path, only="esm2", mirror=host.url)
    dl.download(dest=tmp_path, only="classifier_300", mirror=host.url)
    weights = tmp_path / "esm2_t36_3B_UR50D.pt"
    weights.write_bytes(b"corrupted")
    save_malicious_torch(tmp_path / "300_model.pth", str(tmp_path / "PWNED"))
    dl.download(dest=tmp_path, only="esm2", mirror=host.url)
    dl.download(dest=tmp_path, only="classifier_300", mirror=host.url)
    assert weights.read_bytes() == payloads["esm.pt"]
    assert (tmp_path / "300_model.pth").read_bytes() == payloads["c300"]
    assert not (tmp_path / "PWNED").exists()
    err = capsys.readouterr().err
    assert "pinned sha256" in err and "pinned git blob id" in err and "downloaded again" in err


def _foreign_file(path: Path) -> None:
    path.write_bytes(b"the user's own classifier")


def _foreign_dir(path: Path) -> None:
    path.mkdir()
    (path / "notes.txt").write_text("keep me")


def _foreign_link(path: Path) -> None:
    (path.parent / "elsewhere.pth").write_bytes(b"the user's own classifier")
    path.symlink_to(path.parent / "elsewhere.pth")


def _snapshot(folder: Path) -> dict:
    """Every entry but virnucpro's bookkeeping (lock, hash cache): link or not, and its bytes."""
    return {p: (p.is_symlink(), p.read_bytes() if p.is_file() else None)
            for p in folder.rglob("*") if not p.name.startswith(".")}


@pytest.mark.parametrize("plant", [_foreign_file, _foreign_dir, _foreign_link], ids=["file", "directory", "link"])
@pytest.mark.parametrize("with_manifest", [False, True], ids=["hand-staged", "manifest"])
def test_a_file_virnucpro_did_not_write_is_never_replaced(host, payloads, tmp_path, monkeypatch, run_cli,
                                                          plant, with_manifest):
    """Review point 1: a file in place that fails its pin and that no manifest records is the
    user's: exit 4 naming it, nothing transferred, the file as it was (before: replaced with a
    warning; a directory there was a crash in os.replace)."""
    serve_all(host, payloads)
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    if with_manifest:  # another role downloaded here: the manifest does not record this file
        dl.download(dest=tmp_path, only="classifier_500", mirror=host.url)
        host.requests.clear()
    target = tmp_path / "300_model.pth"
    plant(target)
    before = _snapshot(tmp_path)
    code, message = run_cli("models", "download", "--dest", tmp_path, "--only", "classifier_300",
                            "--mirror", host.url)
    assert code == ExitCode.MODELS, message
    assert str(target) in message and "move it away" in message and "bug" not in message
    assert not host.requests
    assert _snapshot(tmp_path) == before
    assert "classifier_300" not in _manifest(tmp_path)


@pytest.mark.parametrize("kind", ["prepare", "predict", "run"])
def test_download_into_another_virnucpro_output_is_refused(host, payloads, tmp_path, monkeypatch, run_cli, kind):
    """Review point 1: a prepare/predict/run folder (its `.virnucpro.json` marker) is no models
    directory; neither is a folder inside one."""
    serve_all(host, payloads)
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    output = tmp_path / "out"
    output.mkdir()
    (output / ".virnucpro.json").write_text(json.dumps({"kind": kind, "files": {}}))
    for dest in (output, output / "models"):
        code, message = run_cli("models", "download", "--dest", dest, "--only", "classifier_500",
                                "--mirror", host.url)
        assert code == ExitCode.BAD_INPUT, message
        assert f"'{kind}' output" in message and str(dest) in message
    assert sorted(p.name for p in output.iterdir()) == [".virnucpro.json"] and not host.requests


@pytest.mark.parametrize("content", ["garbage\n", "[" * 100_000, '{"models": {"esm2": 3}}'],
                         ids=["not-json", "nested-too-deep", "malformed"])
def test_a_damaged_manifest_is_refused_before_any_transfer(host, payloads, tmp_path, monkeypatch, run_cli,
                                                           content):
    """Review points 2 and 4: exit 4 naming the manifest before anything is downloaded (before:
    after the transfer; a deeply nested one was a RecursionError, exit 1)."""
    serve_all(host, payloads)
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    (tmp_path / "manifest.json").write_text(content)
    code, message = run_cli("models", "download", "--dest", tmp_path, "--only", "classifier_500",
                            "--mirror", host.url)
    assert code == ExitCode.MODELS, message
    assert str(tmp_path / "manifest.json") in message and "bug" not in message
    assert not host.requests and not (tmp_path / "500_model.pth").exists()
    assert (tmp_path / "manifest.json").read_text() == content


def test_a_part_link_is_never_written_through(host, payloads, tmp_path, monkeypatch, run_cli):
    """Review point 3: `300_model.pth.part -> victim` was resumed by appending to the victim."""
    serve_all(host, payloads)
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    dest = tmp_path / "models"
    dest.mkdir()
    part = dest / "300_model.pth.part"
    part.symlink_to(victim)
    code, message = run_cli("models", "download", "--dest", dest, "--only", "classifier_300", "--mirror", host.url)
    assert code == ExitCode.MODELS, message
    assert str(part) in message and "link" in message and "move it away" in message
    assert victim.read_bytes() == b"precious" and part.is_symlink() and not host.requests
    assert not (dest / "300_model.pth").exists()


@pytest.mark.parametrize("resumable", [True, False])
def test_a_part_with_another_name_is_never_written(host, payloads, tmp_path, monkeypatch, resumable):
    """`300_model.pth.part` hard-linked to a user's file (a `cp -al` backup of an interrupted
    download): appending or cutting it changed that file too; it is refused, both names untouched."""
    host.files["/c"] = payloads["c300"]
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    part = tmp_path / "c.pth.part"
    os.link(victim, part)
    if not resumable:  # past the size check: the open itself refuses before cutting anything
        monkeypatch.setattr(dl, "_part_size", lambda path: None)
    with pytest.raises(ModelsError, match="hard links") as info:
        dl.fetch(host.url + "/c", tmp_path / "c.pth", git_sha1=git_blob_sha1(payloads["c300"]))
    assert str(part) in str(info.value) and "move it away" in info.value.hint
    assert victim.read_bytes() == b"precious" and part.read_bytes() == b"precious"


def test_a_part_link_made_during_the_transfer_is_not_followed(host, payloads, tmp_path, monkeypatch):
    """Review point 3, the race: the link appears after the check; O_NOFOLLOW refuses it."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    host.files["/c"] = payloads["c300"]
    part = tmp_path / "c.pth.part"
    checked = dl._part_size

    def check_then_link(path):
        size = checked(path)
        if not path.is_symlink():
            path.symlink_to(victim)
        return size

    monkeypatch.setattr(dl, "_part_size", check_then_link)
    with pytest.raises(ModelsError, match="link") as info:
        dl.fetch(host.url + "/c", tmp_path / "c.pth", git_sha1=git_blob_sha1(payloads["c300"]))
    assert str(part) in str(info.value) and victim.read_bytes() == b"precious"


def test_a_default_folder_that_cannot_be_written_names_dest(tmp_path, monkeypatch, run_cli):
    """sudo without -H, or a read-only home: the default folder is one the user did not choose, so
    the fix says how to choose one (`--dest`), not only "fix the permissions"."""
    with tmpfs(tmp_path / "home", "64k") as home:
        remount_read_only(home)
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
        monkeypatch.delenv("VIRNUCPRO_MODELS", raising=False)
        code, message = run_cli("models", "download", "--only", "classifier_500")
    assert code == 10 and "read-only" in message and "--dest DIR" in " ".join(message.split()), message


def test_an_unreachable_mirror_is_named_and_kept_in_the_command_to_rerun(tmp_path, run_cli):
    """A review's case: a --mirror that could not be reached was said as '(offline?)', and the command
    offered to rerun dropped --mirror: it sent a site that needs its mirror to the upstream host."""
    code, message = run_cli("models", "download", "--dest", tmp_path / "m", "--only", "classifier_300",
                            "--mirror", "http://127.0.0.1:9/")
    said = " ".join(message.split())
    assert code == 4 and "cannot reach the mirror 127.0.0.1:9" in said and "offline?" not in said, message
    assert f"virnucpro models download --dest {tmp_path / 'm'} --only classifier_300 --mirror http://127.0.0.1:9/" \
        in said, message


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO],
                         ids=["full", "quota", "read-only", "file-size limit", "I/O error"])
def test_storage_failing_under_a_download_is_exit_10(tmp_path, code):
    """Found by mutation: these were exit 4 (a models problem) with the bare OSError text; CONTRACTS.md
    says a write that fails is exit 10, with a fix."""
    from virnucpro.errors import OutputWriteError

    path = tmp_path / "models" / "500_model.pth.part"
    failure = dl._write_error(path, OSError(code, os.strerror(code), str(path)))
    assert isinstance(failure, OutputWriteError) and failure.code == 10, failure
    assert str(path) in str(failure) and failure.hint, failure
