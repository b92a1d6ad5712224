"""Shared test fixtures: where the reference data lives and how to call the CLI in-process."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

REFERENCE = Path(__file__).parent / "data" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Outputs of the original VirNucPro code and of the DNABERT-S model code (known answers)."""
    assert REFERENCE.is_dir(), f"reference data missing at {REFERENCE}"
    return REFERENCE


@pytest.fixture
def thread_settings_kept():
    """The thread caps a command sets (the pool variables and torch's threads) end with the test."""
    import torch

    from virnucpro.threads import POOL_VARIABLES

    environment = {name: os.environ.get(name) for name in POOL_VARIABLES}
    torch_threads = torch.get_num_threads()
    yield
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    torch.set_num_threads(torch_threads)


@pytest.fixture
def run_cli(capsys, thread_settings_kept):
    """Run `virnucpro ARGS` in-process; returns (exit code, stderr text).

    The thread caps a command sets (environment and torch) are undone after the test, so a
    `--threads 3` here does not change how later tests and their subprocesses compute.
    """
    from virnucpro.cli import main
    from virnucpro.errors import STOP_SIGNALS

    def run(*args: str) -> tuple[int, str]:
        handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        for sig, handler in handlers.items():  # a stopped command leaves stop signals ignored
            signal.signal(sig, handler)
        captured = capsys.readouterr()
        return int(exit_info.value.code or 0), captured.err + captured.out
    return run


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory, tiny_models) -> tuple[Path, Path]:
    """(prepare folder, its one embedding shard) of a two-record sample (one with ORFs), embedded by
    the tiny models: for tests that damage a copy, or read it under a limit."""
    from virnucpro import prepared as fmt
    from virnucpro.embed import embed
    from virnucpro.prepare import prepare

    folder = tmp_path_factory.mktemp("small_sample")
    (folder / "a.fa").write_text(">a\n" + "ACGT" * 200 + "\n>b\n" + "ATGAAACCCGGGTTTTAA" * 40 + "\n")
    prepare([folder / "a.fa"], folder / "prepared", chunk_size=500)
    embed(folder / "prepared" / "shards" / fmt.shard_name(0), folder / "s.h5", models=tiny_models, device="cpu")
    return folder / "prepared", folder / "s.h5"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Tiny random models in the real on-disk formats, written by `virnucpro models tiny`."""
    from virnucpro.models import tiny

    directory = tmp_path_factory.mktemp("models") / "tiny"
    tiny.make_tiny(directory)
    return directory


@pytest.fixture
def models(tmp_path, tiny_models) -> Path:
    """A private copy of the tiny models, free to change (the session's folder stays untouched)."""
    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder)
    return folder


def _model_files(folder: Path) -> list[str]:
    """The model files of a folder (the hash cache of their checksums aside: it is a cache)."""
    from virnucpro.models.store import HASH_CACHE

    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.name != HASH_CACHE)


@pytest.fixture(autouse=True)
def session_models_left_as_made(request):
    """A test that adds to the session's tiny models folder (say the fp16 copy an fp16 embed writes)
    changes what every later test sees there: it fails, and should use a private copy."""
    if "tiny_models" not in request.fixturenames:
        yield
        return
    folder = request.getfixturevalue("tiny_models")
    before = _model_files(folder)
    yield
    assert _model_files(folder) == before, "this test wrote into the shared tiny models folder: copy it first"


@pytest.fixture(scope="session")
def golden_prepared(tmp_path_factory, reference_dir) -> Path:
    """The golden mixed sample prepared at chunk size 500 in shards of 60 ORFs (356 ORFs, 6 shards)."""
    from virnucpro.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "mixed"
    prepare([reference_dir / "golden" / "mixed.fa"], out, chunk_size=500, shard_size=60)
    return out


@pytest.fixture(scope="session")
def golden_embeddings(tmp_path_factory, golden_prepared, tiny_models) -> list[Path]:
    """The golden sample's six shards embedded with the tiny models (read only: copy one to damage it)."""
    from virnucpro import prepared as fmt
    from virnucpro.embed import embed

    folder = tmp_path_factory.mktemp("golden_h5")
    paths = []
    for shard in fmt.load_manifest(golden_prepared)["shards"]:
        paths.append(folder / Path(shard["file"]).with_suffix(".h5").name)
        embed(golden_prepared / shard["file"], paths[-1], models=tiny_models, device="cpu")
    return paths


@pytest.fixture(autouse=True)
def stop_signals_restored():
    """A command stopped in-process (embed called directly) leaves the stop signals ignored, and every
    process a later test starts would inherit that (the container init then kept SIGTERM ignored):
    the dispositions are put back after each test."""
    from virnucpro.errors import STOP_SIGNALS

    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


@pytest.fixture
def recorded_progress(monkeypatch):
    """`recorded_progress(module)`: the list every `Progress` that `module` makes from then on is
    added to (the real class, counting as it does), to check labels, totals and counts after."""
    from virnucpro import console

    def record(module) -> list:
        made = []

        class Recorded(console.Progress):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(self)

        monkeypatch.setattr(module, "Progress", Recorded)
        return made

    return record
