"""The process chain without the Nextflow engine: each module's `script:` block, rendered by Groovy
with the test profile's parameters (through conf/modules.config's ext.args) and inputs staged from
the previous step's real outputs, runs in a temporary task directory against the installed
`virnucpro` CLI and must produce every output it declares; the chain's final tables must equal
`virnucpro run` on the same input. Every `stub:` block must create its declared outputs.

A check of our modules, not a Nextflow replacement: staging is symlinks named as Nextflow names
them, the task shell is the `process.shell` of nextflow.config.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from nextflow_helpers import (
    REPO,
    GroovyRenderer,
    Process,
    assignments,
    config_params,
    parse_pipeline,
    profile_params,
    selector_blocks,
    serve_from_jar,
    staged,
    staged_list,
)
from virnucpro import __version__
from virnucpro.errors import ExitCode

PROCESSES = {p.name: p for s in parse_pipeline().values() for p in s.processes}
MODULES_CONFIG = (REPO / "conf" / "modules.config").read_text()
BASE_CONFIG = (REPO / "conf" / "base.config").read_text()
PARAMS = {**config_params(REPO / "nextflow.config"), **profile_params("test")}
TEST_INPUTS = sorted((REPO / "assets" / "test").glob("sample_*"))
SAMPLE = {"id": "sample_ab"}  # both test inputs as the two files of one sample
TASK_SHELL = ["/bin/bash", "-euo", "pipefail"]  # nextflow.config process.shell
TABLES = {"predictions": "prediction_results.txt", "highestscore": "prediction_results_highestscore.csv",
          "sequences": "sequences.tsv", "chunks": "chunks.tsv"}  # PREDICT emit -> table


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("VIRNUCPRO_MODELS", None)
    if not shutil.which("virnucpro", path=env.get("PATH")):
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


ENV = _env()


class TaskFailed(AssertionError):
    pass


@dataclass
class TaskResult:
    workdir: Path
    command: str
    outputs: Dict[str, List[Path]]  # emit -> files, in glob order (path outputs)
    evaluated: Dict[str, List[str]]  # emit -> what its eval(...) commands printed (versions)


def _stage(workdir: Path, value, stage_as: Optional[str]):
    """Symlink input file(s) into the task directory under Nextflow's names; the binding value."""
    sources = value if isinstance(value, list) else [value]
    names = []
    for source in sources:
        if stage_as and "*" not in stage_as:
            name = stage_as[1:-1]
        elif stage_as:
            name = stage_as[1:-1].replace("*", Path(source).name)
        else:
            name = Path(source).name
        target = workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(source).resolve())
        names.append(name)
    if isinstance(value, list) and len(names) != 1:
        return staged_list(names)
    return staged(names[0])


def run_task(groovy: GroovyRenderer, process: Process, workdir: Path, inputs: Dict[str, object],
             block: str = "script") -> TaskResult:
    """Render `block` with its ext.* config closures, run it in `workdir`, check its outputs."""
    workdir.mkdir(parents=True)
    bindings = {"task": {"cpus": 2, "attempt": 1, "process": process.name, "ext": {}}}
    for declaration in process.inputs:
        for qualifier, name, stage_as in declaration.names:
            value = inputs[name]
            bindings[name] = _stage(workdir, value, stage_as) if qualifier == "path" else value
    bindings["params"] = PARAMS  # for the config closures only (the modules never read params)
    items = []
    for selector_body in selector_blocks(MODULES_CONFIG, "withName").get(process.name, []):
        for key, code in assignments(selector_body).items():
            if key.startswith("ext."):
                items.append((key, code, True))
    items.append(("command", process.script if block == "script" else process.stub, False))
    for k, output in enumerate(process.outputs):
        items += [(f"path:{k}:{j}", code, False) for j, code in enumerate(output.paths)]
        items += [(f"eval:{k}:{j}", code, False) for j, code in enumerate(output.evals)]
    rendered = groovy.evaluate(bindings, items)
    command = rendered["command"]
    (workdir / ".command.sh").write_text(command)
    proc = subprocess.run([*TASK_SHELL, ".command.sh"], cwd=workdir, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TaskFailed(f"{process.name} {block} exited {proc.returncode}\n{command}\n{proc.stderr[-3000:]}")
    outputs: Dict[str, List[Path]] = {}
    evaluated: Dict[str, List[str]] = {}
    for k, output in enumerate(process.outputs):
        files: List[Path] = []
        printed: List[str] = []
        for j in range(len(output.paths)):
            pattern = rendered[f"path:{k}:{j}"]
            matched = sorted(workdir.glob(pattern))
            assert matched or output.optional, f"{process.name} ({block}): no output matches {pattern!r}"
            for path in matched:
                assert path.is_dir() if output.is_dir else path.is_file(), \
                    f"{process.name} ({block}): {path} is not a {'directory' if output.is_dir else 'file'}"
            files += matched
        for j in range(len(output.evals)):
            cmd = rendered[f"eval:{k}:{j}"]
            ev = subprocess.run([*TASK_SHELL, "-c", cmd], cwd=workdir, env=ENV, capture_output=True, text=True)
            assert ev.returncode == 0 and ev.stdout.strip(), \
                f"{process.name} ({block}): eval({cmd!r}) gave {ev.returncode}: {ev.stdout!r} {ev.stderr[-500:]}"
            printed.append(ev.stdout.strip())
        if output.emit:
            outputs[output.emit] = files
            evaluated[output.emit] = printed
    return TaskResult(workdir, command, outputs, evaluated)


def run_step(groovy, process_name, workdir, inputs, command) -> TaskResult:
    return run_task(groovy, PROCESSES[process_name], workdir, inputs)


# --------------------------------------------------------------------------------------------------
# the chain: MODELS_TINY -> PREPARE -> EMBED (one task per shard) -> PREDICT
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def groovy():
    yield from serve_from_jar(GroovyRenderer)


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chain")


@pytest.fixture(scope="module")
def tiny_models_step(groovy, chain_dir) -> Path:
    result = run_step(groovy, "VIRNUCPRO_MODELS_TINY", chain_dir / "models_tiny", {}, ("models", "tiny"))
    return result.outputs["models"][0]


@pytest.fixture(scope="module")
def prepare_step(groovy, chain_dir) -> TaskResult:
    return run_step(groovy, "VIRNUCPRO_PREPARE", chain_dir / "prepare",
                    {"meta": SAMPLE, "reads": TEST_INPUTS}, ("prepare",))


@pytest.fixture(scope="module")
def embed_step(groovy, chain_dir, prepare_step, tiny_models_step) -> List[Path]:
    shards = prepare_step.outputs["shards"]
    results = []
    for shard in reversed(shards):  # any order; the workflow sorts a sample's shards by name for PREDICT
        meta = {**SAMPLE, "n_shards": len(shards)}
        results.append(run_step(groovy, "VIRNUCPRO_EMBED", chain_dir / f"embed_{shard.stem}",
                                {"meta": meta, "shard": shard, "models": tiny_models_step,
                                 "checkpoint_dir": str(chain_dir / "checkpoints")}, ("embed",)))
    return sorted((r.outputs["embeddings"][0] for r in results), key=lambda p: p.name)


@pytest.fixture(scope="module")
def predict_step(groovy, chain_dir, prepare_step, embed_step, tiny_models_step) -> TaskResult:
    return run_step(groovy, "VIRNUCPRO_PREDICT", chain_dir / "predict",
                    {"meta": SAMPLE, "prepared": prepare_step.outputs["prepared"][0], "embeddings": embed_step,
                     "models": tiny_models_step, "classifier": []}, ("predict",))


@pytest.fixture(scope="module")
def run_reference(chain_dir, tiny_models_step) -> Path:
    outdir = chain_dir / "run"
    proc = subprocess.run(["virnucpro", "run", *map(str, TEST_INPUTS), "--outdir", str(outdir),
                           "--models", str(tiny_models_step), "--chunk-size", str(PARAMS["chunk_size"]),
                           "--device", PARAMS["device"], "--precision", PARAMS["precision"], "--offline"],
                          env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return outdir


def test_models_tiny_step(tiny_models_step):
    assert (tiny_models_step / "manifest.json").is_file()


def test_prepare_step(prepare_step):
    assert "--chunk-size 500" in prepare_step.command and f"--shard-size {PARAMS['shard_size']}" in prepare_step.command
    # the test profile's shard size splits the tiny input, so gathering several shards is exercised
    assert len(prepare_step.outputs["shards"]) >= 2
    assert [p.name for p in prepare_step.outputs["shards"]] == sorted(p.name for p in prepare_step.outputs["shards"])


def test_embed_step(embed_step, prepare_step):
    assert [p.stem for p in embed_step] == [p.stem for p in prepare_step.outputs["shards"]]
    import h5py
    for h5 in embed_step:
        with h5py.File(h5, "r", locking=False) as handle:
            assert handle["dnabert_s"].shape[0] == handle["esm2"].shape[0] == len(handle["ids"]) > 0


def test_predict_step(predict_step):
    files = [p for files in predict_step.outputs.values() for p in files]
    assert len(files) == 6 and all(p.parent == predict_step.workdir / SAMPLE["id"] for p in files)
    assert "--models tiny_models" in predict_step.command and "--threshold 0.5" in predict_step.command


def _rows(path: Path) -> List[List[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle, delimiter="\t"))


def _same_cell(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-7)
    except ValueError:
        return False


@pytest.mark.parametrize("emit, table", TABLES.items())
def test_chain_tables_equal_virnucpro_run(predict_step, run_reference, emit, table):
    chain = _rows(predict_step.outputs[emit][0])
    single = _rows(run_reference / table)
    assert chain[0] == single[0]
    assert len(chain) == len(single), f"{table}: {len(chain)} rows in the chain, {len(single)} from run"
    for got, want in zip(chain, single):
        assert len(got) == len(want) and all(_same_cell(a, b) for a, b in zip(got, want)), f"{table}: {got} != {want}"


# --------------------------------------------------------------------------------------------------
# stubs: `-stub-run` creates every declared output
# --------------------------------------------------------------------------------------------------

def _stub_inputs(tmp: Path) -> Dict[str, object]:
    def touch(name: str, directory: bool = False) -> Path:
        path = tmp / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if directory else path.write_text("")
        return path
    return {
        "meta": {**SAMPLE, "n_shards": 2},
        "reads": [touch("a.fasta"), touch("b.fastq.gz")],
        "shard": touch("shard_00001.tsv"),
        "models": touch("models", directory=True),
        "checkpoint_dir": str(tmp / "checkpoints"),
        "prepared": touch("prepared", directory=True),
        "embeddings": [touch("shard_00000.h5"), touch("shard_00001.h5")],
        "classifier": [],
    }


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_stub_creates_declared_outputs(groovy, tmp_path, name):
    result = run_task(groovy, PROCESSES[name], tmp_path / "task", _stub_inputs(tmp_path), block="stub")
    for emit in PROCESSES[name].emits:
        assert result.outputs[emit] or result.evaluated[emit], f"{name}: nothing for {emit}"
    assert result.evaluated["versions_virnucpro"] == [__version__]


# --------------------------------------------------------------------------------------------------
# config closures, evaluated by Groovy
# --------------------------------------------------------------------------------------------------

def _embed_args(groovy, attempt: int, **params) -> str:
    body = selector_blocks(MODULES_CONFIG, "withName")["VIRNUCPRO_EMBED"][0]
    return groovy.evaluate({"params": {**PARAMS, **params}, "task": {"attempt": attempt}},
                           [("ext.args", assignments(body)["ext.args"], True)])["ext.args"]


@pytest.mark.parametrize("device", ["cpu", "cuda", "auto"])
def test_embed_retries_halve_the_token_budget(groovy, device):
    from virnucpro import embed
    default = embed.DEFAULT_TOKEN_BUDGET["cpu" if device == "cpu" else "cuda"]
    assert _embed_args(groovy, 1, device=device) == f"--device {device} --precision {PARAMS['precision']}"
    for attempt in (2, 3, 4):
        assert _embed_args(groovy, attempt, device=device).endswith(f"--token-budget {default >> (attempt - 1)}")
    assert _embed_args(groovy, 1, device=device, token_budget=1000).endswith("--token-budget 1000")
    assert _embed_args(groovy, 3, device=device, token_budget=1000).endswith("--token-budget 250")


def _error_strategy(groovy, closure: str, code: int) -> str:
    return groovy.evaluate({"task": {"exitStatus": code, "attempt": 1}},
                           [("strategy", closure, True)])["strategy"]


def test_error_strategy_retries_embed_on_the_cli_codes_and_scheduler_kills(groovy):
    gpu = assignments(selector_blocks(BASE_CONFIG, "withLabel")["process_gpu"][0])["errorStrategy"]
    retried = {code for code in [*range(0, 10), 130, 137, 139, 140, 143]
               if _error_strategy(groovy, gpu, code) == "retry"}
    assert retried == {ExitCode.INTERRUPTED, ExitCode.GPU_OOM, ExitCode.DEVICE, 137, 140, 143}
    assert _error_strategy(groovy, gpu, int(ExitCode.BAD_INPUT)) == "finish"


def test_outputs_are_published_under_outdir_per_sample(groovy):
    blocks = selector_blocks(MODULES_CONFIG, "withName")
    params = {**PARAMS, "outdir": "/results"}
    published = {}
    for name in ("VIRNUCPRO_PREDICT", "VIRNUCPRO_EMBED", "VIRNUCPRO_PREPARE"):
        publish = assignments(blocks[name][0])["publishDir"]
        published[name] = groovy.evaluate({"params": params, "meta": SAMPLE},
                                          [("path", f"({publish}).path.call()", False)])["path"]
    # PREDICT's outputs are <prefix>/<table> with prefix = meta.id, published under outdir
    assert published["VIRNUCPRO_PREDICT"] == "/results"
    assert all(code.startswith('"${prefix}/') for o in PROCESSES["VIRNUCPRO_PREDICT"].outputs for code in o.paths)
    assert published["VIRNUCPRO_EMBED"] == "/results/sample_ab/embeddings"
    assert published["VIRNUCPRO_PREPARE"] == "/results/sample_ab"


def test_task_shell_is_the_configured_one():
    text = (REPO / "nextflow.config").read_text()
    block = text[text.index("process.shell = ["):]
    block = block[:block.index("]") + 1]
    assert re.findall(r"'([^']+)'", block) == TASK_SHELL
