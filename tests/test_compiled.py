"""The compiled fast path (issue 10, point 2): torch.compile of each layer's work around attention.

On the CPU, inductor compiles the same functions to C++ that it compiles to Triton on a GPU, so
these tests run the real compile: the compiled path equals the reference path (fp32, 1e-5), one
graph serves every layer and every batch length, compiled kernels land in the cache folder and a
second process loads them from there, a compile that fails falls back to the uncompiled fast path
with one warning, and `--no-compile` reaches the encoders.
"""

from __future__ import annotations

import errno
import fcntl
import getpass
import json
import shutil
import stat
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import re

import pytest
import torch

from encoder_fixtures import esm_checkpoints, fair_esm_model  # noqa: F401  (fixtures)
from test_fast_attention import LONG_MIX, SHORT_MIX, esm_tokens, random_tokens
from torch._dynamo.exc import BackendCompilerFailed
from torch._inductor.exc import CppCompileError

from virnucpro.encoders import FAST_COMPILED, REFERENCE_COMPILED, compiled
from virnucpro.errors import OutputWriteError
from virnucpro.encoders import dnabert_s as dnabert_module
from virnucpro.encoders import esm2 as esm2_module
from virnucpro.encoders.dnabert_s import DnabertSEncoder
from virnucpro.encoders.esm2 import Esm2Encoder

CPU = torch.device("cpu")
EXACT = 1e-5
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def encoders(reference_dir, esm_checkpoints, tmp_path_factory):  # noqa: F811
    """Both tiny encoders on the compiled fast path (compiled once for the module), with torch's
    compile cache in a folder of this module (torch writes its choice into os.environ: undone after)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(compiled.TORCH_CACHE_VARIABLE, str(tmp_path_factory.mktemp("compile-cache")))
        yield {"esm2": Esm2Encoder(esm_checkpoints["cfg"], CPU, torch.float32, path="fast", compile=True),
               "dnabert_s": DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32, path="fast",
                                            compile=True)}


def tokens_for(kind: str, encoder, lengths, seed: int = 0) -> list[np.ndarray]:
    return esm_tokens(lengths, seed) if kind == "esm2" else random_tokens(lengths, 0, encoder.vocab_size, seed)


def graphs_compiled(kind: str) -> int:
    """How many graphs torch.compile holds for this encoder's fused layer functions."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    functions = FUSED[kind]
    return sum(len(_debug_get_cache_entry_list(function.__code__)) for function in functions)


FUSED = {"esm2": (esm2_module._Layer.attention_inputs, esm2_module._Layer.after_attention),
         "dnabert_s": (dnabert_module._Layer.after_attention,)}


def embed_with_fresh_encoders(run_cli, *args):
    """`virnucpro embed ARGS` with the encoders loaded afresh (after the test's patches) and dropped
    after it, so no other test meets them."""
    import virnucpro.embed

    virnucpro.embed._load_encoders_cached.cache_clear()
    try:
        return run_cli("embed", *args)
    finally:
        virnucpro.embed._load_encoders_cached.cache_clear()


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
@pytest.mark.parametrize("lengths", [LONG_MIX, SHORT_MIX], ids=["long", "short"])
def test_compiled_path_equals_reference(encoders, kind, lengths):
    encoder = encoders[kind]
    assert encoder.path == FAST_COMPILED and encoder.compile_seconds > 0
    collated = encoder.collate(tokens_for(kind, encoder, lengths))
    compiled_vectors = encoder._run(collated, FAST_COMPILED)
    assert float((compiled_vectors - encoder._run(collated, "reference")).abs().max()) <= EXACT
    assert float((compiled_vectors - encoder._run(collated, "fast")).abs().max()) <= EXACT


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_one_graph_serves_every_layer_and_every_batch_length(encoders, kind):
    encoder = encoders[kind]
    assert graphs_compiled(kind) == len(FUSED[kind])  # compiled once, by the self-check at load
    for seed, lengths in enumerate([[30, 9], [5], [400, 3, 3], [77] * 9, [1000, 12], [2, 2, 2, 2]]):
        encoder.forward(encoder.collate(tokens_for(kind, encoder, lengths, seed)))
    assert graphs_compiled(kind) == len(FUSED[kind])


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_a_failed_compile_falls_back_to_the_uncompiled_fast_path(kind, reference_dir, esm_checkpoints,  # noqa: F811
                                                                 monkeypatch, capsys):
    def no_compiler(function):
        def raising(*args, **kwargs):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error (no compiler)")
        return raising

    monkeypatch.setattr(compiled, "fused", no_compiler)
    if kind == "esm2":
        encoder = Esm2Encoder(esm_checkpoints["cfg"], CPU, torch.float32, path="fast", compile=True)
    else:
        encoder = DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32, path="fast", compile=True)
    warned = " ".join(capsys.readouterr().err.split())
    assert encoder.path == "fast" and encoder.compile_seconds == 0.0
    assert warned.count("warning:") == 1
    assert "compiled fast path not used, falling back to the fast attention path: it raised RuntimeError" in warned


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_compiled_path_runs_from_the_layout_thread(encoders, kind):
    """On a GPU, embed launches batches from its layout thread: the compiled graphs work there too."""
    from concurrent.futures import ThreadPoolExecutor

    encoder = encoders[kind]
    collated = encoder.collate(tokens_for(kind, encoder, SHORT_MIX, seed=3))
    with ThreadPoolExecutor(1) as pool:
        in_thread = pool.submit(encoder.forward, collated).result()
    assert torch.equal(in_thread, encoder.forward(collated)) and graphs_compiled(kind) == len(FUSED[kind])


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_a_compiled_path_failing_mid_run_falls_back_for_good(kind, reference_dir, esm_checkpoints,  # noqa: F811
                                                              monkeypatch, capsys):
    if kind == "esm2":
        encoder = Esm2Encoder(esm_checkpoints["cfg"], CPU, torch.float32, path="fast", compile=True)
    else:
        encoder = DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32, path="fast", compile=True)
    assert encoder.path == FAST_COMPILED
    capsys.readouterr()
    collated = encoder.collate(tokens_for(kind, encoder, [300, 20, 7], seed=5))
    expected = encoder._run(collated, "fast")

    monkeypatch.setattr(compiled, "fused", raising_from_compile(CppCompileError("g++ -shared ...", "out of resources")))
    assert torch.equal(encoder.forward(collated), expected) and encoder.path == "fast"
    assert torch.equal(encoder.forward(collated), expected)
    warned = " ".join(capsys.readouterr().err.split())
    assert warned.count("warning:") == 1
    assert "compiled fast path failed on a batch (CppCompileError: C++ compile error" in warned


def test_the_hdf5_record_names_every_path_that_computed_vectors(reference_dir, monkeypatch, capsys):
    """A fallback mid-shard: the shard's `attention` attribute lists both paths of that model."""
    from virnucpro.embed import Embedder

    dnabert = DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32, path="fast", compile=True)
    embedder = Embedder({"dnabert_s": dnabert}, 4096, CPU)
    tokens = dict(enumerate(tokens_for("dnabert_s", dnabert, [50, 8, 30])))
    assert embedder.made_by().attention_text() == "dnabert_s:fast+compiled"  # nothing computed yet: the loaded path
    embedder.run("dnabert_s", tokens, [0, 1])
    monkeypatch.setattr(compiled, "fused", raising_from_compile(CppCompileError("g++", "failed")))
    embedder.run("dnabert_s", tokens, [2])
    assert embedder.made_by().attention_text() == "dnabert_s:fast,dnabert_s:fast+compiled"


def test_a_stop_signal_met_inside_the_compiler_ends_embed_with_exit_6(tiny_models, golden_prepared, tmp_path,
                                                                     run_cli, monkeypatch):
    """A real SIGTERM while torch.compile compiles at load (the handler's InterruptedByUser raised
    inside the compiler, which wraps it): exit 6, not a fallback and a finished shard."""
    import signal

    import virnucpro.encoders
    from test_embed import shard

    def stopping_backend(graph, example_inputs):
        os.kill(os.getpid(), signal.SIGTERM)
        return graph.forward

    monkeypatch.setattr(virnucpro.encoders, "choose_path", lambda requested, device, model="": "fast")
    monkeypatch.setattr(compiled, "wanted", lambda requested, device: True)
    monkeypatch.setattr(compiled, "fused", lambda function: torch.compile(function, backend=stopping_backend))
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, str(tmp_path / "compile-cache"))
    code, err = embed_with_fresh_encoders(run_cli, shard(golden_prepared), "--models", tiny_models, "--out",
                                          tmp_path / "s.h5", "--device", "cpu",
                                          "--compile-cache", tmp_path / "compile-cache")
    assert code == 6, err
    assert "SIGTERM received" in err and "falling back" not in err and not (tmp_path / "s.h5").exists()


def test_a_stop_swallowed_by_a_library_still_ends_the_command_with_exit_6():
    """A library that catches everything can eat the handler's exception; the command that then
    finishes (typer's exit 0) still ends in exit 6."""
    import signal

    from virnucpro import errors

    with pytest.raises(errors.InterruptedByUser, match="SIGTERM received"):
        with errors.stop_signals_exit_interrupted():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
            except errors.InterruptedByUser:
                pass  # what a library's broad except does
            raise SystemExit(0)


def backend_compiler_failed(backend, error: BaseException) -> BackendCompilerFailed:
    """dynamo's wrapper of a compiler's error, built as the installed torch builds it (newer ones also
    take a traceback, older ones do not)."""
    try:
        return BackendCompilerFailed(backend, error, None)
    except TypeError:
        return BackendCompilerFailed(backend, error)


def raising_from_compile(error: BaseException):
    """A stand-in for compiled.fused whose compiled functions raise `error` (wrapped as dynamo does)."""
    def inductor():
        pass

    wrapped = backend_compiler_failed(inductor, error)

    def fused(function):
        def raising(*args, **kwargs):
            raise wrapped
        return raising

    return fused


def test_a_cuda_failure_is_not_hidden_by_a_fallback(encoders, monkeypatch):
    """A CUDA failure reaches embed (exit 8) as it is (no path would work on that device); the
    compiled path stays chosen."""
    error = RuntimeError("CUDA error: an illegal memory access was encountered")

    def fused(function):
        def raising(*args, **kwargs):
            raise error
        return raising

    encoder = encoders["esm2"]
    monkeypatch.setattr(compiled, "fused", fused)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        encoder.forward(encoder.collate(tokens_for("esm2", encoder, [40, 4])))
    assert encoder.path == FAST_COMPILED


def fresh(kind: str, reference_dir, esm_checkpoints, compile: bool):  # noqa: F811
    """A tiny encoder of its own on the fast path (a test may move it to a safer path)."""
    if kind == "esm2":
        return Esm2Encoder(esm_checkpoints["cfg"], CPU, torch.float32, path="fast", compile=compile)
    return DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32, path="fast", compile=compile)


def raising_attention(error: BaseException):
    """A stand-in for batching._flex: FlexAttention that raises `error` (for any stream)."""
    def flex(on_gpu):
        def raising(*args, **kwargs):
            raise error
        return raising

    return flex


@pytest.mark.parametrize("kind", ["esm2", "dnabert_s"])
def test_an_uncompiled_fast_path_failing_mid_run_falls_back_to_the_reference_path(
        kind, reference_dir, esm_checkpoints, monkeypatch, capsys):  # noqa: F811
    """On a GPU the uncompiled fast path still compiles FlexAttention, which may fail for a new
    stream length: one warning, the reference path for this batch and every later one."""
    from torch._dynamo.exc import TorchDynamoException

    from virnucpro.encoders import batching

    encoder = fresh(kind, reference_dir, esm_checkpoints, compile=False)
    assert encoder.path == "fast"
    capsys.readouterr()
    collated = encoder.collate(tokens_for(kind, encoder, [300, 20, 7], seed=5))
    expected = encoder._run(collated, "reference")
    monkeypatch.setattr(batching, "_flex", raising_attention(TorchDynamoException("recompiling failed")))
    assert torch.equal(encoder.forward(collated), expected) and encoder.path == "reference"
    assert torch.equal(encoder.forward(collated), expected)
    warned = " ".join(capsys.readouterr().err.split())
    assert warned.count("warning:") == 1, warned
    assert ("the fast attention path failed on a batch (TorchDynamoException: recompiling failed); using the "
            "reference path from now on") in warned


def test_compiled_and_fast_failing_on_one_batch_is_one_warning_and_the_reference_path(
        reference_dir, esm_checkpoints, monkeypatch, capsys):  # noqa: F811
    from virnucpro.encoders import batching

    encoder = fresh("dnabert_s", reference_dir, esm_checkpoints, compile=True)
    assert encoder.path == FAST_COMPILED
    capsys.readouterr()
    collated = encoder.collate(tokens_for("dnabert_s", encoder, [90, 33, 4], seed=6))
    expected = encoder._run(collated, "reference")
    monkeypatch.setattr(batching, "_flex", raising_attention(KeyError("a kernel bug")))
    assert torch.equal(encoder.forward(collated), expected) and encoder.path == "reference"
    warned = " ".join(capsys.readouterr().err.split())
    assert warned.count("warning:") == 1, warned
    assert ("the compiled fast path failed on a batch (KeyError: 'a kernel bug'); the fast attention path "
            "failed on it too (KeyError: 'a kernel bug'); using the reference path from now on") in warned


@pytest.mark.parametrize("error", ["out of memory", "stop"])
def test_what_must_propagate_from_the_uncompiled_fast_path_does(error, reference_dir, esm_checkpoints,  # noqa: F811
                                                                monkeypatch, capsys):
    """Out-of-memory (embed halves the batch) and a stop signal (exit 6), also wrapped by
    torch.compile, end the call as they are: no fallback, no warning."""
    from virnucpro.encoders import batching
    from virnucpro.errors import InterruptedByUser

    inner = (torch.cuda.OutOfMemoryError("CUDA out of memory") if error == "out of memory"
             else InterruptedByUser("SIGTERM received"))
    encoder = fresh("esm2", reference_dir, esm_checkpoints, compile=False)
    capsys.readouterr()
    for raised in (inner, backend_compiler_failed(lambda: None, inner)):
        monkeypatch.setattr(batching, "_flex", raising_attention(raised))
        with pytest.raises(type(inner)):
            encoder.forward(encoder.collate(tokens_for("esm2", encoder, [40, 4])))
        assert encoder.path == "fast"
    assert "warning" not in capsys.readouterr().err


def test_a_fast_path_failing_mid_shard_ends_in_exit_0_and_a_truthful_record(tiny_models, golden_prepared, tmp_path,
                                                                            run_cli, monkeypatch):
    """embed on the fast path whose FlexAttention fails for every batch after load: each model
    warns once, every batch is recomputed on the reference path, the shard equals a reference
    run's, and its `attention` attribute names the reference path."""
    import virnucpro.embed
    import virnucpro.encoders
    from checkpoint_helpers import read_h5
    from test_embed import shard
    from torch._dynamo.exc import TorchDynamoException

    from virnucpro.encoders import batching

    def embedder_with_failing_attention(self, *args, **kwargs):
        monkeypatch.setattr(batching, "_flex", raising_attention(TorchDynamoException("new length")))
        real_init(self, *args, **kwargs)

    code, err = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", tmp_path / "ref.h5",
                        "--device", "cpu")
    assert code == 0, err
    real_init = virnucpro.embed.Embedder.__init__
    monkeypatch.setattr(virnucpro.embed.Embedder, "__init__", embedder_with_failing_attention)
    monkeypatch.setattr(virnucpro.encoders, "choose_path", lambda requested, device, model="": "fast")
    code, err = embed_with_fresh_encoders(run_cli, shard(golden_prepared), "--models", tiny_models, "--out",
                                          tmp_path / "s.h5", "--device", "cpu")
    assert code == 0, err
    warned = " ".join(err.split())
    assert warned.count("warning:") == 2, warned  # one per model
    for model in ("DNABERT-S", "ESM-2"):
        assert warned.count(f"{model}: the fast attention path failed on a batch (TorchDynamoException") == 1
    ids, nucleotide, protein, attrs = read_h5(tmp_path / "s.h5")
    _, expected_nucleotide, expected_protein, _ = read_h5(tmp_path / "ref.h5")
    np.testing.assert_allclose(nucleotide, expected_nucleotide, atol=EXACT, rtol=0)
    np.testing.assert_allclose(protein, expected_protein, atol=EXACT, rtol=0)
    assert attrs["attention"] == "dnabert_s:reference,esm2:reference"


def test_out_of_memory_while_compiling_is_left_to_embed(encoders, monkeypatch):
    """Dynamo wraps an out-of-memory met while compiling: embed gets the out-of-memory, and halves."""
    encoder = encoders["dnabert_s"]
    monkeypatch.setattr(compiled, "fused", raising_from_compile(torch.cuda.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        encoder.forward(encoder.collate(tokens_for("dnabert_s", encoder, [40, 4])))
    assert encoder.path == FAST_COMPILED


def test_a_stop_signal_during_the_compile_at_load_is_not_a_fallback(reference_dir):
    """The stop handler raises InterruptedByUser (exit 6) wherever the process is: while compiling
    at load it must end the command, not be reported as a failed compile."""
    from virnucpro.encoders import settle_path
    from virnucpro.errors import InterruptedByUser

    def run(path):
        if path == FAST_COMPILED:
            raise InterruptedByUser("SIGTERM received")
        return torch.ones(2, 3)

    with pytest.raises(InterruptedByUser):
        settle_path("ESM-2", "fast", CPU, torch.float32, run, compile=True)


def test_out_of_memory_on_the_compiled_path_is_left_to_embed(encoders, monkeypatch):
    """embed halves a batch that runs out of GPU memory: the compiled path is kept for the halves."""
    def out_of_memory(function):
        def raising(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return raising

    encoder = encoders["dnabert_s"]
    monkeypatch.setattr(compiled, "fused", out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        encoder.forward(encoder.collate(tokens_for("dnabert_s", encoder, [40, 4])))
    assert encoder.path == FAST_COMPILED


def test_the_probe_that_compiles_is_larger_on_a_gpu():
    from virnucpro.encoders import PROBE_LENGTHS, random_probe

    def draw(rng, n):
        return "A" * n

    assert [len(s) for s in random_probe(draw)] == list(PROBE_LENGTHS)
    assert [len(s) for s in random_probe(draw, "cuda:0")] == list(PROBE_LENGTHS) * 16


def test_compile_is_wanted_on_a_gpu_unless_refused():
    assert compiled.wanted(None, "cuda") and compiled.wanted(None, torch.device("cuda:1"))
    assert not compiled.wanted(None, CPU) and not compiled.wanted(False, "cuda") and compiled.wanted(True, CPU)


def test_uncompiled_when_not_wanted(reference_dir, capsys):
    encoder = DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32, path="fast")
    assert encoder.path == "fast" and encoder.compile_seconds == 0.0
    assert "warning" not in capsys.readouterr().err


def test_cache_folder_default_user_and_unwritable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, "restored-to-absent-after-the-test")
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ours = tmp_path / "xdg" / f"virnucpro-{os.geteuid()}" / "torch-compile"
    assert compiled.use_cache() == ours
    assert os.environ[compiled.TORCH_CACHE_VARIABLE] == str(ours)
    assert compiled.use_cache() == ours  # the user's (or ours) kept
    assert compiled.use_cache(tmp_path / "given") == tmp_path / "given" and (tmp_path / "given").is_dir()
    (tmp_path / "a-file").write_text("x")
    fallback = compiled.use_cache(tmp_path / "a-file" / "cache")  # cannot be created under a file
    assert fallback == Path(tempfile.gettempdir()) / f"virnucpro-{os.geteuid()}" / "torch-compile"  # private
    assert "cannot write the compile cache" in capsys.readouterr().err
    monkeypatch.delenv("XDG_CACHE_HOME")

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", no_home)
    assert compiled.default_cache() is None  # a container user without a home: torch's default
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE)
    assert compiled.use_cache() == fallback


ANOTHER_USER, THIS_USER = 2001, 2002
# the ownership checks are tested with folders of other users (os.chown) and a faked uid whose own
# folders root made: as another user these tests cannot set up their folders
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: makes folders owned by other users")


def as_user(monkeypatch, uid: int) -> None:
    """Run the cache checks as if this (root) process were user `uid`."""
    monkeypatch.setattr(os, "getuid", lambda: uid)
    monkeypatch.setattr(os, "geteuid", lambda: uid)


def default_cache_in(tmp_path, monkeypatch) -> Path:
    """$XDG_CACHE_HOME in tmp_path, no TORCHINDUCTOR_CACHE_DIR (both restored after the test)."""
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, "restored-after-the-test")
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


@needs_root
def test_the_default_cache_is_per_user_and_private(tmp_path, monkeypatch):
    """Under Apptainer the image's XDG_CACHE_HOME (/tmp/...) is shared by every user of a node: the
    default folder names the user and every folder it creates is 0700."""
    xdg = default_cache_in(tmp_path, monkeypatch)
    as_user(monkeypatch, THIS_USER)
    folder = compiled.use_cache()
    assert folder == xdg / f"virnucpro-{THIS_USER}" / "torch-compile" and compiled.default_cache() == folder
    assert os.environ[compiled.TORCH_CACHE_VARIABLE] == str(folder)
    assert [oct(path.stat().st_mode & 0o777) for path in (xdg, folder.parent, folder)] == ["0o700"] * 3


@pytest.fixture(autouse=True)
def temporary_folder(tmp_path_factory, monkeypatch) -> Path:
    """tempfile's folder (the fallback's home) of the test's own, for every test: a fallback cache made
    in the machine's /tmp outlived the suite there (`virnucpro-<uid>`, for a uid a test pretends to be)."""
    folder = tmp_path_factory.mktemp("tmp")
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    compiled._one_off.cache_clear()
    return folder


def plant(folder: Path, owner: int = ANOTHER_USER) -> None:
    """A world-writable folder another user made, as one would to plant compiled kernels."""
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)
    os.chown(folder, owner, owner)


@needs_root
@pytest.mark.parametrize("planted", [f"xdg/virnucpro-{THIS_USER}", f"xdg/virnucpro-{THIS_USER}/torch-compile"])
def test_a_default_cache_another_user_made_is_not_used(planted, tmp_path, monkeypatch, capsys, temporary_folder):
    """One warning and this user's private folder in the temporary folder, never their folder."""
    xdg = default_cache_in(tmp_path, monkeypatch)
    plant(tmp_path / planted)
    as_user(monkeypatch, THIS_USER)
    folder = compiled.use_cache()
    assert folder == temporary_folder / f"virnucpro-{THIS_USER}" / "torch-compile"
    assert os.environ[compiled.TORCH_CACHE_VARIABLE] == str(folder) and not str(folder).startswith(str(xdg))
    warned = " ".join(capsys.readouterr().err.split())
    assert warned.count("warning:") == 1 and f"{tmp_path / planted} belongs to uid {ANOTHER_USER}" in warned, warned
    assert f"using {folder} instead (fix: give --compile-cache DIR" in warned


@needs_root
def test_when_the_fallback_is_planted_too_a_folder_of_this_process_is_used(tmp_path, monkeypatch, capsys,
                                                                             temporary_folder):
    """torch's own default (/tmp/torchinductor_<user>) is never used: nobody checks it."""
    default_cache_in(tmp_path, monkeypatch)
    plant(tmp_path / "xdg" / f"virnucpro-{THIS_USER}")
    plant(temporary_folder / f"virnucpro-{THIS_USER}")
    as_user(monkeypatch, THIS_USER)
    folder = compiled.use_cache()
    assert folder.parent == temporary_folder and folder.name.startswith("virnucpro-compile-")
    assert oct(folder.stat().st_mode & 0o777) == "0o700" and "torchinductor" not in str(folder)


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o777], ids=["mkdir-p", "group", "all"])
def test_the_users_own_cache_folders_are_closed_to_others(mode, tmp_path, monkeypatch, capsys):
    """The cache and its virnucpro-<uid> folder, the user's own but open (made with `mkdir -p`, or
    under umask 002): made 0700, so nobody else can enter, whatever modes torch gives the folders
    it makes inside."""
    xdg = default_cache_in(tmp_path, monkeypatch)
    ours = xdg / f"virnucpro-{os.geteuid()}"
    (ours / "torch-compile").mkdir(parents=True)
    for folder in (ours, ours / "torch-compile"):
        os.chmod(folder, mode)
    assert compiled.use_cache() == ours / "torch-compile" and "warning" not in capsys.readouterr().err
    assert [oct(folder.stat().st_mode & 0o777) for folder in (ours, ours / "torch-compile")] == ["0o700"] * 2


@needs_root
def test_in_a_user_namespace_a_planted_folder_of_ours_is_still_refused(tmp_path, monkeypatch, capsys):
    """There another user's folders show as the overflow uid, like root's: trusted above our
    folders (root's /tmp), never as the cache or its virnucpro-<uid> folder."""
    shared = shared_sticky(tmp_path, monkeypatch, owner=65534)
    monkeypatch.setattr(compiled, "_namespace_root", lambda: (65534,))
    planted = shared / f"virnucpro-{THIS_USER}"
    (planted / "torch-compile").mkdir(parents=True)
    for folder in (planted, planted / "torch-compile"):
        os.chown(folder, 65534, 65534)
    as_user(monkeypatch, THIS_USER)
    used, problem = compiled._private(planted / "torch-compile")  # (the fallback: files of real root here)
    assert used is None and f"{planted / 'torch-compile'} belongs to uid 65534" in problem, problem


@needs_root
def test_a_home_of_roots_that_all_can_write_does_not_end_the_check(tmp_path, monkeypatch, capsys):
    """A pod's emptyDir home (0777, root's, not sticky): others could rename ~/.cache."""
    home = tmp_path / "hw"
    home.mkdir()
    os.chmod(home, 0o777)
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, "restored-after-the-test")
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    as_user(monkeypatch, THIS_USER)
    assert not str(compiled.use_cache()).startswith(str(home))
    assert f"{home} can be written by group or others" in " ".join(capsys.readouterr().err.split())


def test_a_default_cache_under_a_file_is_one_warning(tmp_path, monkeypatch, capsys):
    xdg = default_cache_in(tmp_path, monkeypatch)
    xdg.write_text("not a folder")
    assert not str(compiled.use_cache()).startswith(str(xdg)) and xdg.read_text() == "not a folder"
    warned = " ".join(capsys.readouterr().err.split())
    assert f"cannot write the compile cache {xdg}/virnucpro-" in warned
    assert f"(cannot create {xdg}/virnucpro-{os.geteuid()}: Not a directory)" in warned and warned.count("warning:") == 1


@needs_root
def test_a_link_on_the_way_is_judged_where_it_leads(tmp_path, monkeypatch, capsys, temporary_folder):
    """The user's folder linked to scratch (to spare a home quota) is theirs and used by its real
    path (a link changed later cannot move it); linked into another user's folder, it is not."""
    xdg = default_cache_in(tmp_path, monkeypatch)
    xdg.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    (xdg / f"virnucpro-{THIS_USER}").symlink_to(scratch)
    as_user(monkeypatch, THIS_USER)
    assert compiled.use_cache() == scratch / "torch-compile" and "warning" not in capsys.readouterr().err
    os.chown(scratch, ANOTHER_USER, ANOTHER_USER)
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE)
    assert compiled.use_cache() == temporary_folder / f"virnucpro-{THIS_USER}" / "torch-compile"
    assert f"{scratch} belongs to uid {ANOTHER_USER}" in " ".join(capsys.readouterr().err.split())


@needs_root
@pytest.mark.parametrize("owner, mode", [(ANOTHER_USER, 0o777), (THIS_USER, 0o775)], ids=["theirs", "group"])
def test_a_cache_base_others_can_write_is_refused_as_they_could_swap_our_folder(owner, mode, tmp_path, monkeypatch,
                                                                                  capsys, temporary_folder):
    """Our own 0700 folders in a base others can write (not sticky): they could rename ours away
    and put theirs in its place after the check."""
    xdg = default_cache_in(tmp_path, monkeypatch)
    xdg.mkdir()
    os.chmod(xdg, mode)
    os.chown(xdg, owner, owner)
    as_user(monkeypatch, THIS_USER)
    assert compiled.use_cache() == temporary_folder / f"virnucpro-{THIS_USER}" / "torch-compile"
    warned = " ".join(capsys.readouterr().err.split())
    assert (f"{xdg} belongs to uid {ANOTHER_USER}" if owner == ANOTHER_USER
            else f"{xdg} can be written by group or others (fix: chmod go-w {xdg})") in warned, warned


@needs_root
def test_the_users_home_ends_the_check_even_if_group_writable(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir(mode=0o775)
    os.chmod(home, 0o775)
    os.chown(home, THIS_USER, THIS_USER)
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, "restored-after-the-test")
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    as_user(monkeypatch, THIS_USER)
    assert compiled.use_cache() == home / ".cache" / f"virnucpro-{THIS_USER}" / "torch-compile"
    assert "warning" not in capsys.readouterr().err


@needs_root
def test_no_temporary_folder_at_all_is_one_error_not_a_bug(tmp_path, monkeypatch):
    xdg = default_cache_in(tmp_path, monkeypatch)
    plant(xdg / f"virnucpro-{os.geteuid()}")

    def none_usable():
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp']")

    monkeypatch.setattr(tempfile, "gettempdir", none_usable)
    with pytest.raises(OutputWriteError, match="no private folder for compiled GPU kernels") as raised:
        compiled.use_cache()
    assert "--no-compile" in str(raised.value) and raised.value.code == 10


def shared_sticky(tmp_path, monkeypatch, owner: int = 0) -> Path:
    """A sticky folder writable by all (like /tmp) as XDG_CACHE_HOME, as the image sets it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    os.chown(shared, owner, owner)
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, "restored-after-the-test")
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    return shared


@needs_root
def test_in_a_shared_sticky_folder_like_tmp_each_user_has_a_folder_of_their_own(tmp_path, monkeypatch, capsys):
    """Another user's folder beside ours is no obstacle; ours is used while it is ours, and refused
    once another user owns it."""
    shared = shared_sticky(tmp_path, monkeypatch)
    as_user(monkeypatch, THIS_USER)
    (shared / f"virnucpro-{ANOTHER_USER}").mkdir(mode=0o700)
    os.chown(shared / f"virnucpro-{ANOTHER_USER}", ANOTHER_USER, ANOTHER_USER)
    expected = shared / f"virnucpro-{THIS_USER}" / "torch-compile"
    assert compiled.use_cache() == expected and "warning" not in capsys.readouterr().err
    os.chown(shared / f"virnucpro-{THIS_USER}", ANOTHER_USER, ANOTHER_USER)
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE)
    assert compiled.use_cache() != expected
    assert f"virnucpro-{THIS_USER} belongs to uid {ANOTHER_USER}" in " ".join(capsys.readouterr().err.split())


@needs_root
@pytest.mark.parametrize("namespace", [False, True], ids=["host", "user-namespace"])
def test_a_sticky_folder_of_nobody_is_roots_only_in_a_user_namespace(namespace, tmp_path, monkeypatch, capsys):
    """Under Apptainer's user namespace root's /tmp shows as owned by the overflow uid; outside one,
    a sticky folder of that user (or any other) may have ours renamed by its owner."""
    shared = shared_sticky(tmp_path, monkeypatch, owner=65534)
    monkeypatch.setattr(compiled, "_namespace_root", lambda: (65534,) if namespace else ())
    ours = shared / f"virnucpro-{THIS_USER}"
    (ours / "torch-compile").mkdir(parents=True, mode=0o700)
    for folder in (ours, ours / "torch-compile"):  # as this user would have made them
        os.chown(folder, THIS_USER, THIS_USER)
        os.chmod(folder, 0o700)
    as_user(monkeypatch, THIS_USER)
    used = compiled.use_cache()
    assert (used == tmp_path / "shared" / f"virnucpro-{THIS_USER}" / "torch-compile") == namespace
    assert ("belongs to uid 65534" in capsys.readouterr().err) != namespace


@needs_root
def test_a_sticky_folder_inside_another_users_folder_does_not_end_the_check(tmp_path, monkeypatch, capsys):
    """Its owner could rename the sticky folder itself with everything in it."""
    theirs = tmp_path / "alice"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, ANOTHER_USER, ANOTHER_USER)
    monkeypatch.setattr(compiled, "_namespace_root", lambda: ())
    shared = shared_sticky(theirs, monkeypatch)
    as_user(monkeypatch, THIS_USER)
    assert not str(compiled.use_cache()).startswith(str(shared))
    assert f"{theirs} belongs to uid {ANOTHER_USER}" in " ".join(capsys.readouterr().err.split())


@needs_root
def test_a_one_off_folder_is_refused_where_another_user_could_swap_it(tmp_path, monkeypatch):
    """Neither the default nor the kept fallback usable, and a temporary folder others can write
    (not sticky): exit 10 rather than a folder they could rename during the run."""
    scratch = tmp_path / "scratch"
    plant(scratch)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    compiled._one_off.cache_clear()
    xdg = default_cache_in(tmp_path, monkeypatch)
    plant(xdg / f"virnucpro-{THIS_USER}")
    as_user(monkeypatch, THIS_USER)
    with pytest.raises(OutputWriteError, match="no private folder for compiled GPU kernels") as raised:
        compiled.use_cache()
    said = " ".join(str(raised.value).split())
    assert f"{scratch} belongs to uid {ANOTHER_USER}" in said
    # every folder tried is named with its reason: the default first, then the kept fallback
    assert said.index(f"{xdg / f'virnucpro-{THIS_USER}'} belongs to uid {ANOTHER_USER}") < said.index(
        f"{scratch} belongs to uid {ANOTHER_USER}"), said
    assert not list(scratch.glob("virnucpro-compile-*")), "the refused one-off folder was left behind"


@pytest.mark.parametrize("home", ["", "rel"])
def test_a_home_that_is_not_absolute_is_no_home(home, monkeypatch):
    """Python reads HOME='' as / (root made /.cache/virnucpro-0 at the top of the file system)."""
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", home)
    assert compiled.default_cache() is None


@needs_root
def test_a_folder_refused_twice_is_named_once(tmp_path, monkeypatch):
    """The image's XDG_CACHE_HOME=/tmp with TMPDIR unset: the default and the kept fallback are one
    folder, checked twice; the exit-10 message names it once."""
    scratch = tmp_path / "scratch"
    plant(scratch)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    compiled._one_off.cache_clear()
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, "restored-after-the-test")
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(scratch))
    as_user(monkeypatch, THIS_USER)
    with pytest.raises(OutputWriteError) as raised:
        compiled.use_cache()
    reasons = str(raised.value).split(": ", 1)[1].split("\n")[0].split("; ")
    assert len(reasons) == len(set(reasons)), reasons


def test_a_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    """The XDG spec: a relative path is invalid and ignored (it would land in a task's work folder)."""
    monkeypatch.setenv("XDG_CACHE_HOME", "cache")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compiled.default_cache() == tmp_path / ".cache" / f"virnucpro-{os.geteuid()}" / "torch-compile"
    monkeypatch.setenv("HOME", "relative-home")  # no absolute home: the temporary folder, no warning
    assert compiled.default_cache() is None


@needs_root
def test_a_named_cache_is_the_users_choice(tmp_path, monkeypatch):
    """--compile-cache DIR and TORCHINDUCTOR_CACHE_DIR are used as they are, whoever made them."""
    shared = tmp_path / "project-cache"
    shared.mkdir()
    os.chmod(shared, 0o777)
    os.chown(shared, ANOTHER_USER, ANOTHER_USER)
    as_user(monkeypatch, THIS_USER)
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, str(shared))
    assert compiled.use_cache() == shared
    assert compiled.use_cache(shared) == shared and os.environ[compiled.TORCH_CACHE_VARIABLE] == str(shared)


def dockerfile_environment() -> dict[str, str]:
    """The variables the image's ENV lines set (the last value of each)."""
    import shlex

    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            found.update(pair.split("=", 1) for pair in shlex.split(line[4:]))
    return found


def test_the_image_keeps_the_hosts_python_settings_out(tmp_path):
    """Apptainer passes the host's environment in, the image's ENV winning: a PYTHONPATH from
    `module load` or a user site-packages folder with another numpy would shadow the image's."""
    shadow = tmp_path / "shadow"
    (shadow / "numpy").mkdir(parents=True)
    (shadow / "numpy" / "__init__.py").write_text("raise ImportError('the host numpy')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow), "PYTHONUSERBASE": str(tmp_path / "user")}
    env.update(dockerfile_environment())  # the image's variables win (Apptainer)
    done = subprocess.run([sys.executable, "-c", "import sys, numpy; print(sys.flags.no_user_site, numpy.__file__)"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    no_user_site, numpy_file = done.stdout.split()
    assert no_user_site == "1" and not numpy_file.startswith(str(shadow))


def test_cache_folder_in_an_output_is_refused(tmp_path, run_cli, reference_dir):
    from virnucpro.errors import BadInputError

    code, err = run_cli("prepare", reference_dir / "vanilla" / "test_with_orfs.fa", "--outdir", tmp_path / "p")
    assert code == 0, err
    with pytest.raises(BadInputError, match=r"--compile-cache \S+/p is a virnucpro 'prepare' output"):
        compiled.use_cache(tmp_path / "p")
    with pytest.raises(BadInputError, match=r"--compile-cache \S+/p/shards/c is inside \S+/p, a virnucpro 'prepare'"):
        compiled.use_cache(tmp_path / "p" / "shards" / "c")


def test_cache_folder_in_this_commands_own_output_is_refused(tmp_path):
    """`run` may nest its stages in its own folder, not a cache that must outlive it (its work
    folder is removed at the end)."""
    from virnucpro.errors import BadInputError
    from virnucpro.outdir import claim

    with claim(tmp_path / "o", "run", ["run_info.json"]):
        for inside in (tmp_path / "o", tmp_path / "o" / "work" / "cc"):
            with pytest.raises(BadInputError, match="this command's own output"):
                compiled.use_cache(inside)


def test_the_cache_is_settled_on_a_gpu_even_without_compiling(tmp_path, monkeypatch):
    """FlexAttention (DNABERT-S) compiles on a GPU whatever --no-compile says: its kernels go to the
    chosen cache too. (Encoders stubbed: this machine has no GPU.)"""
    import virnucpro.embed as embed_module

    built = []
    for module, name in ((dnabert_module, "DnabertSEncoder"), (esm2_module, "Esm2Encoder")):
        monkeypatch.setattr(module, name, lambda *args, **kwargs: built.append(kwargs["compile"]))
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, "restored-after-the-test")
    embed_module._load_encoders_cached.cache_clear()
    try:
        embed_module._load_encoders_cached(Path("d"), Path("e"), "{}", torch.device("cuda"), "fp16",
                                           embed_module.Compiling(False, tmp_path / "cc"))
    finally:
        embed_module._load_encoders_cached.cache_clear()
    assert built == [False, False] and os.environ[compiled.TORCH_CACHE_VARIABLE] == str(tmp_path / "cc")


CACHE_PROBE = r"""
import json, sys, torch
from torch._dynamo.utils import counters
from virnucpro.encoders import compiled
from virnucpro.encoders.dnabert_s import DnabertSEncoder
compiled.use_cache(sys.argv[2])
encoder = DnabertSEncoder(sys.argv[1], torch.device("cpu"), torch.float32, path="fast", compile=True)
print(json.dumps({"path": encoder.path, "hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def cache_probe(reference_dir: Path, cache: Path) -> subprocess.CompletedProcess:
    """One task compiling the fast path of DNABERT-S with `cache` as its compile cache."""
    env = {k: v for k, v in os.environ.items() if k != compiled.TORCH_CACHE_VARIABLE}
    done = subprocess.run([sys.executable, "-c", CACHE_PROBE, str(reference_dir / "dnabert_s_tiny"), str(cache)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"compile cache {cache}" in " ".join(done.stderr.split())
    return done


def probe_counts(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def filled_cache(reference_dir, tmp_path_factory) -> tuple[Path, dict]:
    """A compile cache filled by a first task that found it empty, and what that task counted."""
    cache = tmp_path_factory.mktemp("filled") / "compile-cache"
    return cache, probe_counts(cache_probe(reference_dir, cache))


def test_compiled_kernels_are_cached_for_the_next_task(reference_dir, filled_cache):
    """Two processes on one cache folder: the first compiles and fills it, the second loads."""
    cache, first = filled_cache
    assert first["path"] == FAST_COMPILED and first["misses"] > 0 and any(cache.iterdir())
    second = probe_counts(cache_probe(reference_dir, cache))
    assert second["path"] == FAST_COMPILED and second["hits"] > 0 and second["misses"] == 0


def test_a_damaged_compile_cache_is_one_warning_not_tracebacks(reference_dir, filled_cache, tmp_path):
    """Every file of a filled cache overwritten: torch ignores the entries and compiles again, and
    says so as one virnucpro warning instead of a traceback per entry."""
    cache = tmp_path / "compile-cache"
    shutil.copytree(filled_cache[0], cache)
    damaged = [path for path in cache.rglob("*") if path.is_file()]
    for path in damaged:
        path.write_bytes(b"garbage")
    done = cache_probe(reference_dir, cache)
    err = done.stderr
    assert probe_counts(done)["path"] == FAST_COMPILED, err
    assert damaged and "Traceback" not in err and "unable to load" not in err, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"compile cache {cache}: an entry could not be read" in warnings[0], err


def test_no_compile_reaches_the_encoders(monkeypatch, tmp_path):
    """`embed --no-compile` and `run --no-compile --compile-cache DIR` hand their choice down."""
    from typer.testing import CliRunner

    import virnucpro.cli
    import virnucpro.embed
    import virnucpro.run
    from virnucpro.cli import app

    seen = []
    monkeypatch.setattr(virnucpro.cli, "limit_threads", lambda threads: threads or 1)  # no pool settings leak
    monkeypatch.setattr(virnucpro.embed, "embed", lambda *args, **kwargs: seen.append(kwargs["compiling"]))
    monkeypatch.setattr(virnucpro.run, "run", lambda *args, **kwargs: seen.append(kwargs["compiling"]))
    runner = CliRunner()
    shard = tmp_path / "shard.tsv"
    assert runner.invoke(app, ["embed", str(shard), "--out", str(tmp_path / "x.h5"), "--no-compile"]).exit_code == 0
    assert runner.invoke(app, ["embed", str(shard), "--out", str(tmp_path / "x.h5")]).exit_code == 0
    assert runner.invoke(app, ["run", str(shard), "-o", str(tmp_path / "o"), "--no-compile",
                               "--compile-cache", str(tmp_path / "cc")]).exit_code == 0
    assert [(c.enabled, c.cache) for c in seen] == [(False, None), (None, None), (False, tmp_path / "cc")]


def test_a_name_planted_at_torchs_default_cache_does_not_stop_embed_on_the_cpu(tiny_models, golden_prepared,
                                                                               tmp_path):
    """Building the models made torch's default cache folder, /tmp/torchinductor_<user>, even with
    nothing to compile: a file another user put at that name ended every embed with a traceback."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    (temporary / f"torchinductor_{getpass.getuser()}").write_text("planted by another user\n")
    env = {k: v for k, v in os.environ.items() if k != compiled.TORCH_CACHE_VARIABLE}
    env.update(TMPDIR=str(temporary), XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run([str(Path(sys.executable).parent / "virnucpro"), "embed",
                           str(golden_prepared / "shards" / "shard_00000.tsv"), "--models", str(tiny_models),
                           "--out", str(tmp_path / "e.h5"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (temporary / f"torchinductor_{getpass.getuser()}").read_text() == "planted by another user\n"


def test_a_cpu_run_needs_no_private_temporary_folder_when_nothing_compiles(tiny_models, golden_prepared, tmp_path):
    """The review of the change above: a temporary folder under a group-writable one (not private
    enough for compiled kernels, which are code) ended a CPU embed that compiles nothing, exit 10."""
    shared = tmp_path / "group"
    (shared / "tmp").mkdir(parents=True)
    shared.chmod(0o775)
    (shared / "tmp").chmod(0o700)
    env = {k: v for k, v in os.environ.items() if k not in (compiled.TORCH_CACHE_VARIABLE, "XDG_CACHE_HOME")}
    env.update(TMPDIR=str(shared / "tmp"), HOME="")
    done = subprocess.run([str(Path(sys.executable).parent / "virnucpro"), "embed",
                           str(golden_prepared / "shards" / "shard_00000.tsv"), "--models", str(tiny_models),
                           "--out", str(tmp_path / "e.h5"), "--device", "cpu", "--no-compile"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert list((shared / "tmp").iterdir()) == [], "the process's folder for torch is removed at exit"


def test_a_named_cache_it_creates_is_private_even_under_umask_002(tmp_path, monkeypatch):
    """The pipeline names `<checkpoint_dir>/compile-cache`, a folder a group may share: made under
    umask 002 it was group-writable, and every member could put kernels in it that the others'
    tasks then ran. It is made 0700 (another user's task then falls back to its own, with a
    warning); the folders above it are made as any, and an existing one is used as it is."""
    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, "restored-after-the-test")
    monkeypatch.delenv(compiled.TORCH_CACHE_VARIABLE)
    old = os.umask(0o002)
    try:
        folder = compiled.use_cache(tmp_path / "shared" / "compile-cache")
    finally:
        os.umask(old)
    assert folder == tmp_path / "shared" / "compile-cache"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o775


# A process that makes its folders for torch (the CPU scratch and the one-off compile cache) in TMPDIR, prints
# them, then either is SIGKILLed ("kill": no removal at exit) or waits for a line on stdin ("live").
PROCESS_FOLDERS = r"""
import os, signal, sys
from virnucpro.encoders import compiled
print(compiled._scratch(), compiled._one_off()[0], sep="\n", flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.readline()
"""


def process_folders(tmp: Path, how: str) -> tuple[subprocess.Popen, list[Path]]:
    process = subprocess.Popen([sys.executable, "-c", PROCESS_FOLDERS, how], env={**os.environ, "TMPDIR": str(tmp)},
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    folders = [Path(process.stdout.readline().strip()) for _ in range(2)]
    assert all(folder.is_dir() and folder.parent == tmp for folder in folders), folders
    return process, folders


def test_the_folders_of_a_killed_process_are_removed_by_the_next_one(tmp_path):
    """A SIGKILL (the out-of-memory killer) skips the removal at exit: the next virnucpro process removes
    the per-process folders nobody holds. Those of a live process, folders without an owner lock (an older
    virnucpro's), a copy of a killed one's and, as root, another user's are left alone."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o700)
    killed, gone = process_folders(tmp, "kill")
    assert killed.wait(timeout=60) == -9 and all(folder.is_dir() for folder in gone)
    copy = shutil.copytree(gone[0], tmp / f"{gone[0].name}.keep")  # a user keeping it: its lock file copied too
    assert (copy / compiled.OWNER_LOCK).is_file()
    live, kept = process_folders(tmp, "live")
    kept.append(copy)
    older = tmp / "virnucpro-torch-older"
    older.mkdir()
    if os.geteuid() == 0:  # another user's, its lock file free: not ours to remove
        theirs = tmp / "virnucpro-compile-theirs"
        theirs.mkdir()
        (theirs / compiled.OWNER_LOCK).write_text(compiled._owner_token(theirs))
        os.chown(theirs, ANOTHER_USER, ANOTHER_USER)
        kept.append(theirs)
    try:
        after, its_own = process_folders(tmp, "live")
        assert not any(folder.exists() for folder in gone), "the killed process's folders stayed"
        assert all(folder.is_dir() for folder in [*kept, older, *its_own])
        after.communicate("\n", timeout=60)
        assert not any(folder.exists() for folder in its_own), "a process removes its own folders at exit"
    finally:
        live.communicate("\n", timeout=60)
    assert sorted(path.name for path in tmp.iterdir()) == sorted(
        path.name for path in [older, *kept[2:]]), "the live process removed its own folders at exit"


def test_a_folder_whose_process_was_killed_before_it_locked_it_goes_a_day_later(tmp_path):
    """A review's case: a kill between making the folder and renaming its owner lock into place left
    a folder no process ever removed (it held no owner lock). Once unchanged for a day, holding nothing
    or only the unheld lock under its first name, the next process removes it; one holding anything
    else, one whose lock is held, and a recent one stay."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o700)
    fresh = f"{compiled.OWNER_LOCK}.new"
    made = {name: tmp / name for name in ("virnucpro-torch-empty", "virnucpro-compile-new", "virnucpro-torch-held",
                                          "virnucpro-torch-older", "virnucpro-torch-recent", "virnucpro-torch-x.keep")}
    for folder in made.values():
        folder.mkdir()
    for name in ("virnucpro-compile-new", "virnucpro-torch-held"):
        (made[name] / fresh).write_text("")
    (made["virnucpro-torch-older"] / "kernel.so").write_text("an older virnucpro's, its process alive")
    # a user's copy of another machine's folder: its owner lock, free, names that folder there
    (made["virnucpro-torch-x.keep"] / compiled.OWNER_LOCK).write_text("another-host 1:2\n")
    kept = ["virnucpro-torch-held", "virnucpro-torch-older", "virnucpro-torch-recent", "virnucpro-torch-x.keep"]
    if os.geteuid() == 0:  # another user's, empty: not ours to remove
        made["virnucpro-compile-theirs"] = tmp / "virnucpro-compile-theirs"
        made["virnucpro-compile-theirs"].mkdir()
        os.chown(made["virnucpro-compile-theirs"], ANOTHER_USER, ANOTHER_USER)
        kept.append("virnucpro-compile-theirs")
    held = os.open(made["virnucpro-torch-held"] / fresh, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    day_ago = time.time() - compiled.STRANDED_SECONDS - 60
    for name, folder in made.items():
        if name != "virnucpro-torch-recent":
            os.utime(folder, (day_ago, day_ago))
    try:
        live, _own = process_folders(tmp, "live")
        live.communicate("\n", timeout=60)
    finally:
        os.close(held)
    assert sorted(path.name for path in tmp.iterdir()) == sorted(kept)


def test_where_locks_do_not_work_no_folder_is_taken_for_stranded(tmp_path, monkeypatch):
    """Without locks a live process's folder never gets its owner lock: an old empty one may be in use."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    old = tmp_path / "virnucpro-torch-old"
    old.mkdir()
    day_ago = time.time() - compiled.STRANDED_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    compiled._remove_abandoned_folders(locks_work=False)
    assert old.is_dir()
    compiled._remove_abandoned_folders(locks_work=True)
    assert not old.exists()


def test_a_folder_whose_owner_lock_cannot_be_taken_says_locks_do_not_work(tmp_path, monkeypatch):
    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(compiled.fcntl, "flock", no_locks)
    assert compiled._hold_owner_lock(tmp_path) is False
    assert list(tmp_path.iterdir()) == []


def test_an_owner_lock_is_never_seen_unlocked(tmp_path, monkeypatch):
    """A reviewer's case: the lock file was created, then locked; a process starting at that moment took
    the live folder for abandoned and removed it. It is locked under another name, then renamed."""
    seen = []
    real = compiled.fcntl.flock

    def flock(handle, operation):
        seen.append(sorted(path.name for path in tmp_path.iterdir()))
        return real(handle, operation)

    monkeypatch.setattr(compiled.fcntl, "flock", flock)
    compiled._hold_owner_lock(tmp_path)
    handle = compiled._owner_locks.pop()
    try:
        assert seen == [[f"{compiled.OWNER_LOCK}.new"]], seen
        assert sorted(path.name for path in tmp_path.iterdir()) == [compiled.OWNER_LOCK]
        assert not compiled._abandoned(tmp_path)  # held by this process
    finally:
        os.close(handle)
    assert compiled._abandoned(tmp_path)  # free once its process let go


# --- DNABERT-S's compiled reference path (its GPU default: cuDNN attention over rows, fused elementwise work) ---

@pytest.fixture(scope="module")
def compiled_reference(reference_dir, encoders):
    """DNABERT-S on its compiled reference path, sharing the module's compile cache (and graph)."""
    return DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32, path="reference", compile=True)


@pytest.mark.parametrize("lengths", [LONG_MIX, SHORT_MIX], ids=["long", "short"])
def test_the_compiled_reference_path_equals_the_reference_path(compiled_reference, lengths):
    encoder = compiled_reference
    assert encoder.path == REFERENCE_COMPILED and encoder.compile_seconds > 0
    collated = encoder.collate(tokens_for("dnabert_s", encoder, lengths))  # several sequences per row
    vectors = encoder._run(collated, REFERENCE_COMPILED)
    assert float((vectors - encoder._run(collated, "reference")).abs().max()) <= EXACT
    assert float((vectors - encoder._run(collated, "fast")).abs().max()) <= EXACT


def test_the_compiled_reference_path_uses_the_fast_paths_graph(compiled_reference, encoders):
    """Rows flattened to tokens: the graph the compiled fast path made serves it (no second compile)."""
    for seed, lengths in enumerate([[30, 9], [5], [400, 3, 3], [77] * 9, [1000, 12]]):
        compiled_reference.forward(compiled_reference.collate(tokens_for("dnabert_s", compiled_reference, lengths, seed)))
    assert graphs_compiled("dnabert_s") == len(FUSED["dnabert_s"])


def test_only_dnabert_s_has_a_compiled_reference_path(esm_checkpoints, reference_dir, capsys):  # noqa: F811
    assert Esm2Encoder(esm_checkpoints["cfg"], CPU, torch.float32, path="reference", compile=True).path == "reference"
    uncompiled = DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32, path="reference")
    assert uncompiled.path == "reference" and "warning" not in capsys.readouterr().err  # compiling not wanted on a CPU


def test_a_failed_compile_of_the_reference_path_falls_back_to_it_uncompiled(reference_dir, monkeypatch, capsys):
    def no_compiler(function):
        def raising(*args, **kwargs):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error (no compiler)")
        return raising

    monkeypatch.setattr(compiled, "fused", no_compiler)
    encoder = DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32, path="reference", compile=True)
    warned = " ".join(capsys.readouterr().err.split())
    assert encoder.path == "reference" and encoder.compile_seconds == 0.0 and warned.count("warning:") == 1
    assert ("DNABERT-S: compiled reference path not used, falling back to the reference path: it raised "
            "RuntimeError") in warned and "older than" not in warned


def test_the_compiled_reference_path_failing_mid_run_falls_back_for_good(compiled_reference, reference_dir,
                                                                        monkeypatch, capsys):
    encoder = DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32, path="reference", compile=True)
    assert encoder.path == REFERENCE_COMPILED
    capsys.readouterr()
    collated = encoder.collate(tokens_for("dnabert_s", encoder, [300, 20, 7], seed=5))
    expected = encoder._run(collated, "reference")
    monkeypatch.setattr(compiled, "fused", raising_from_compile(CppCompileError("g++ -shared ...", "out of resources")))
    assert torch.equal(encoder.forward(collated), expected) and encoder.path == "reference"
    warned = " ".join(capsys.readouterr().err.split())
    assert warned.count("warning:") == 1
    assert "compiled reference path failed on a batch (CppCompileError: C++ compile error" in warned


def test_a_checkpoint_record_of_the_compiled_reference_path_is_understood():
    from virnucpro.embed import ATTENTION_ENTRY

    assert ATTENTION_ENTRY.fullmatch(f"dnabert_s:{REFERENCE_COMPILED}")
    assert not ATTENTION_ENTRY.fullmatch("dnabert_s:reference+fast")


def test_embed_on_the_compiled_reference_path_equals_a_reference_run_and_records_it(
        tiny_models, golden_prepared, tmp_path, run_cli, monkeypatch):
    """Compiling as on a GPU (forced on the CPU): DNABERT-S's rows run compiled, ESM-2's reference
    path has no compiled form; the vectors equal a plain reference run's, and the shard says which
    path made them (a checkpoint part's record of it is understood: the test above)."""
    from checkpoint_helpers import read_h5
    from test_embed import shard

    code, err = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", tmp_path / "ref.h5",
                        "--device", "cpu")
    assert code == 0, err
    monkeypatch.setattr(compiled, "wanted", lambda requested, device: True)
    code, err = embed_with_fresh_encoders(run_cli, shard(golden_prepared), "--models", tiny_models, "--out",
                                          tmp_path / "s.h5", "--device", "cpu", "--compile-cache", tmp_path / "cache")
    assert code == 0, err
    assert "DNABERT-S: reference attention path with fused elementwise kernels, compiled and checked" in err
    assert re.search(r"models loaded in [\d.]+s \(DNABERT-S [\d.]+s, ESM-2 [\d.]+s, self-checks and compiling "
                     r"included\)", err), err  # where a task's start-up goes
    assert re.search(r"against the reference path: max \|delta\| \S+, limit 0.0001; min cosine 1.000000", err), err
    ids, nucleotide, protein, attrs = read_h5(tmp_path / "s.h5")
    _, expected_nucleotide, expected_protein, _ = read_h5(tmp_path / "ref.h5")
    np.testing.assert_allclose(nucleotide, expected_nucleotide, atol=EXACT, rtol=0)
    np.testing.assert_array_equal(protein, expected_protein)
    assert attrs["attention"] == f"dnabert_s:{REFERENCE_COMPILED},esm2:reference"


def test_cache_entries_that_cannot_be_written_are_one_warning_not_tracebacks(capsys, caplog):
    """A review's case: on a full disk torch logged 'fx graph unable to write to cache' with a
    traceback per entry, and AOTAutograd 'unable to serialize' too; the run goes on, said once."""
    import logging

    compiled.quiet_unreadable_cache()
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        for _ in range(3):
            logging.getLogger("torch._inductor.codecache").warning("fx graph unable to write to cache", exc_info=True)
            logging.getLogger("torch._functorch._aot_autograd.autograd_cache").warning(
                "AOTAutograd cache unable to serialize compiled graph: %s", "No space left on device")
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unable to" not in err, err
    assert err.count("an entry could not be written (a full disk or quota?)") == 1, err
    assert not [record for record in caplog.records if "unable to" in record.getMessage()]  # dropped
