"""`models download` against a local HTTP server on 127.0.0.1 — never a real host."""

from __future__ import annotations

import fcntl
import json
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from store_fixtures import (FakeHost, closed_port_url, git_blob_sha1,  # noqa: E402
                            save_malicious_torch, sha256)

from virnucpro import download as dl  # noqa: E402
from virnucpro import store  # noqa: E402
from virnucpro.errors import ExitCode, ModelsError  # noqa: E402

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
    store.make_tiny(tiny)
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
            spec("esm2_t36_3B_UR50D.pt", "fair-esm/models/esm2_t36_3B_UR50D.pt"),
            spec("esm2_t36_3B_UR50D-contact-regression.pt",
                 "fair-esm/regression/esm2_t36_3B_UR50D-contact-regression.pt"))),
        "dnabert_s": dl.RoleSource("dnabert_s", "zhihan1996/DNABERT-S", base, "rev", (
            spec("DNABERT-S/config.json", f"{hf}/config.json"),
            spec("DNABERT-S/model.safetensors", f"{hf}/model.safetensors",
                 sha256=sha256(payloads["model.safetensors"])),
            spec("DNABERT-S/tokenizer.json", f"{hf}/tokenizer.json"))),
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


def test_real_sources_are_pinned():
    """The shipped table: every file has a URL, the revisions are commits, pins look right."""
    assert set(dl.SOURCES) == set(store.ROLES)
    assert len(dl.DNABERT_S_REVISION) == 40 and len(dl.VIRNUCPRO_COMMIT) == 40
    for source in dl.SOURCES.values():
        for spec in source.files:
            assert dl._url(spec, None).startswith("https://")
            assert dl._url(spec, "http://mirror.example/x/") == f"http://mirror.example/x/{spec.path}"
    names = {Path(s.relpath).name for s in dl.SOURCES["dnabert_s"].files}
    assert {"config.json", "tokenizer.json"} <= names and names & set(store.DNABERT_WEIGHTS)
    assert all(s.git_sha1 for s in dl.SOURCES["classifier_300"].files + dl.SOURCES["classifier_500"].files)


def test_download_everything_through_mirror(host, payloads, tmp_path, monkeypatch):
    serve_all(host, payloads)
    monkeypatch.setattr(dl, "SOURCES", fake_sources(payloads))
    dest = tmp_path / "models"
    store.download(dest=dest, only=None, mirror=host.url + "/")
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
    store.download(dest=dest, only=None, mirror=host.url)
    assert len(host.requests) == before


def test_only_one_role(host, payloads, tmp_path, monkeypatch):
    serve_all(host, payloads)
    monkeypatch.setattr(dl, "SOURCES", fake_sources(payloads))
    store.download(dest=tmp_path, only="classifier_500", mirror=host.url)
    assert (tmp_path / "500_model.pth").is_file() and not (tmp_path / "300_model.pth").exists()
    assert list(json.loads((tmp_path / "manifest.json").read_text())["models"]) == ["classifier_500"]
    with pytest.raises(ModelsError, match="unknown model"):
        store.download(dest=tmp_path, only="esm3", mirror=host.url)
    with pytest.raises(ModelsError, match="http"):
        store.download(dest=tmp_path, only="esm2", mirror="ftp://somewhere")


def test_pinned_checksum_mismatch(host, payloads, tmp_path, monkeypatch):
    serve_all(host, payloads)
    host.files["/VirNucPro/commit/300_model.pth"] = payloads["c500"]  # wrong file at that path
    monkeypatch.setattr(dl, "SOURCES", fake_sources(payloads))
    with pytest.raises(ModelsError, match="checksum mismatch for classifier_300") as info:
        store.download(dest=tmp_path, only="classifier_300", mirror=host.url)
    assert info.value.code == ExitCode.MODELS
    assert "git blob" in str(info.value)
    assert not (tmp_path / "300_model.pth").exists()
    assert not (tmp_path / "300_model.pth.part").exists()


def test_server_sent_hashes(host, payloads, tmp_path):
    data = payloads["model.safetensors"]
    host.files["/cdn/blob"] = data
    # Hugging Face LFS: a redirect carrying X-Linked-Etag, the sha256 of the content.
    host.redirects["/good"] = (host.url + "/cdn/blob", {"X-Linked-Etag": f'"{sha256(data)}"'})
    host.redirects["/bad"] = (host.url + "/cdn/blob", {"X-Linked-Etag": '"' + "0" * 64 + '"'})
    assert dl.fetch(host.url + "/good", tmp_path / "a") == sha256(data)
    with pytest.raises(ModelsError, match="server's sha256"):
        dl.fetch(host.url + "/bad", tmp_path / "b")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.part").exists()
    # Hugging Face small files: ETag is the git blob id on a response with X-Repo-Commit.
    small = payloads["config.json"]
    host.files["/cfg-good"] = host.files["/cfg-bad"] = small
    host.headers["/cfg-good"] = {"X-Repo-Commit": "rev", "ETag": f'"{git_blob_sha1(small)}"'}
    host.headers["/cfg-bad"] = {"X-Repo-Commit": "rev", "ETag": '"' + "1" * 40 + '"'}
    dl.fetch(host.url + "/cfg-good", tmp_path / "c")
    with pytest.raises(ModelsError, match="git blob"):
        dl.fetch(host.url + "/cfg-bad", tmp_path / "d")
    # An ordinary server's ETag means nothing and is ignored.
    host.files["/plain"] = small
    host.headers["/plain"] = {"ETag": '"' + "2" * 64 + '"'}
    dl.fetch(host.url + "/plain", tmp_path / "e")


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
    monkeypatch.setattr(dl, "SOURCES", fake_sources(payloads))
    monkeypatch.setattr(dl, "ATTEMPTS", 1)
    path = "/fair-esm/models/esm2_t36_3B_UR50D.pt"
    host.drop_once.add(path)
    with pytest.raises(ModelsError, match="rerun the same command to resume"):
        store.download(dest=tmp_path, only="esm2", mirror=host.url)
    part = tmp_path / "esm2_t36_3B_UR50D.pt.part"
    assert part.is_file() and 0 < part.stat().st_size < len(payloads["esm.pt"])
    assert not (tmp_path / "esm2_t36_3B_UR50D.pt").exists()
    store.download(dest=tmp_path, only="esm2", mirror=host.url)
    assert (tmp_path / "esm2_t36_3B_UR50D.pt").read_bytes() == payloads["esm.pt"]
    assert host.ranged_requests(path) == [f"bytes={part_size}-" for part_size in
                                          [len(payloads["esm.pt"]) // 2]]


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
    host.files["/flaky"] = payloads["config.json"]
    host.errors["/flaky"] = 2  # two 503s, then the file
    dl.fetch(host.url + "/flaky", tmp_path / "flaky")
    host.files["/down"] = payloads["config.json"]
    host.errors["/down"] = 1000
    with pytest.raises(ModelsError, match="HTTP 503") as info:
        dl.fetch(host.url + "/down", tmp_path / "down")
    assert f"after {dl.ATTEMPTS} attempts" in str(info.value)
    assert sum(1 for p, _ in host.requests if p == "/down") == dl.ATTEMPTS
    with pytest.raises(ModelsError, match="HTTP 404"):
        dl.fetch(host.url + "/absent", tmp_path / "absent")
    assert sum(1 for p, _ in host.requests if p == "/absent") == 1  # no retry on 4xx


def test_offline_connection_refused(payloads, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "SOURCES", fake_sources(payloads))
    with pytest.raises(ModelsError, match=r"cannot reach 127\.0\.0\.1:\d+") as info:
        store.download(dest=tmp_path / "m", only="classifier_300", mirror=closed_port_url())
    assert info.value.code == ExitCode.MODELS
    assert "virnucpro models download --dest" in str(info.value)
    assert not (tmp_path / "m" / "300_model.pth").exists()


def test_downloaded_classifier_must_pass_the_restricted_loader(host, payloads, tmp_path, monkeypatch):
    evil = payloads["evil"]
    host.files["/VirNucPro/commit/300_model.pth"] = evil
    sources = fake_sources(payloads)
    sources["classifier_300"] = dl.RoleSource("classifier_300", "300_model.pth", NOWHERE, "commit", (
        dl.FileSource("300_model.pth", NOWHERE, "VirNucPro/commit/300_model.pth",
                      git_sha1=git_blob_sha1(evil)),))  # the checksum even matches
    monkeypatch.setattr(dl, "SOURCES", sources)
    with pytest.raises(ModelsError, match="failed validation"):
        store.download(dest=tmp_path, only="classifier_300", mirror=host.url)
    assert not (tmp_path / "300_model.pth").exists()
    assert not (tmp_path / "300_model.pth.part").exists()
    assert not Path(payloads["evil-marker"].decode()).exists()


def test_ensure_downloads_only_missing_roles(host, payloads, tmp_path, monkeypatch):
    serve_all(host, payloads)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(dl, "SOURCES", fake_sources(payloads, base=host.url))
    dest = tmp_path / "models"
    store.download(dest=dest, only="esm2", mirror=None)
    host.requests.clear()
    models = store.ensure(dest, offline=False)
    assert set(models.paths) == set(store.ROLES)
    assert not any(p.startswith("/fair-esm/") for p, _ in host.requests)


def test_one_download_at_a_time(host, payloads, tmp_path, monkeypatch):
    serve_all(host, payloads)
    monkeypatch.setattr(dl, "SOURCES", fake_sources(payloads))
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / dl.LOCK_NAME, "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        worker = threading.Thread(target=store.download,
                                  kwargs={"dest": tmp_path, "only": "classifier_500",
                                          "mirror": host.url})
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive() and not host.requests  # waiting for the lock
        fcntl.flock(holder, fcntl.LOCK_UN)
        worker.join(timeout=20)
    assert not worker.is_alive()
    assert (tmp_path / "500_model.pth").is_file()


def test_bad_existing_files_are_replaced(host, payloads, tmp_path, monkeypatch, capsys):
    serve_all(host, payloads)
    monkeypatch.setattr(dl, "SOURCES", fake_sources(payloads))
    store.download(dest=tmp_path, only="esm2", mirror=host.url)
    weights = tmp_path / "esm2_t36_3B_UR50D.pt"
    weights.write_bytes(b"corrupted")  # no pin for ESM-2: the recorded sha256 catches it
    save_malicious_torch(tmp_path / "300_model.pth", str(tmp_path / "PWNED"))
    store.download(dest=tmp_path, only="esm2", mirror=host.url)
    store.download(dest=tmp_path, only="classifier_300", mirror=host.url)
    assert weights.read_bytes() == payloads["esm.pt"]
    assert (tmp_path / "300_model.pth").read_bytes() == payloads["c300"]
    assert not (tmp_path / "PWNED").exists()
    err = capsys.readouterr().err
    assert "recorded sha256" in err and "pinned checksum" in err
