"""The pipeline's config closures, evaluated by Groovy exactly as Nextflow evaluates them: retry
rules, the token budget after a GPU out-of-memory, the container options of EMBED, publishing.

The chain of tasks itself runs on the real engine in tests/pipeline/ (.ci/run); these checks cover
what no CPU run exercises (exit 7 from a GPU, containers with GPUs) in milliseconds.
"""

from __future__ import annotations

import re

import pytest

from nextflow_helpers import (
    REPO,
    GroovyRenderer,
    assignments,
    config_params,
    parse_pipeline,
    profile_params,
    selector_blocks,
    serve_from_jar,
)
from virnucpro.errors import ExitCode

PROCESSES = {p.name: p for s in parse_pipeline().values() for p in s.processes}
MODULES_CONFIG = (REPO / "conf" / "modules.config").read_text()
BASE_CONFIG = (REPO / "conf" / "base.config").read_text()
PARAMS = {**config_params(REPO / "nextflow.config"), **profile_params("test")}
SAMPLE = {"id": "sample_ab"}
TASK_SHELL = ["/bin/bash", "-euo", "pipefail"]  # nextflow.config process.shell


@pytest.fixture(scope="module")
def groovy():
    yield from serve_from_jar(GroovyRenderer)


def _embed_closure(groovy, key: str, attempt: int = 1, previous_exit: int | None = None,
                   engine: str | None = None, checkpoint_dir: str = "/ckpt", **params) -> str:
    body = selector_blocks(MODULES_CONFIG, "withName")["VIRNUCPRO_EMBED"][0]
    task = {"attempt": attempt, **({"previousTrace": {"exit": previous_exit}} if previous_exit is not None else {})}
    bindings = {"params": {**PARAMS, **params}, "task": task, "checkpoint_dir": checkpoint_dir,
                "workflow": {"containerEngine": engine}}
    return groovy.evaluate(bindings, [(key, assignments(body)[key], True)])[key]


@pytest.mark.parametrize("device", ["cpu", "cuda", "auto"])
def test_a_gpu_out_of_memory_retry_halves_the_token_budget(groovy, device):
    from virnucpro import embed
    default = embed.DEFAULT_TOKEN_BUDGET["cpu" if device == "cpu" else "cuda"]
    assert _embed_closure(groovy, "ext.args", device=device) == f"--precision {PARAMS['precision']}"
    assert _embed_closure(groovy, "ext.device", device=device) == device
    for attempt in (2, 3, 4):
        args = _embed_closure(groovy, "ext.args", attempt, int(ExitCode.GPU_OOM), device=device)
        assert args.endswith(f"--token-budget {default >> (attempt - 1)}")
    assert _embed_closure(groovy, "ext.args", 3, int(ExitCode.GPU_OOM), device=device, token_budget=1000) \
        .endswith("--token-budget 250")
    # A retry for any other reason (time limit, kill, interruption) keeps the budget
    for code in (6, 137, 140, 143):
        assert "--token-budget" not in _embed_closure(groovy, "ext.args", 2, code, device=device)
        assert _embed_closure(groovy, "ext.args", 2, code, device=device, token_budget=1000) \
            .endswith("--token-budget 1000")


def test_compile_false_asks_embed_not_to_compile(groovy):
    assert PARAMS["compile"] is True
    assert "--no-compile" not in _embed_closure(groovy, "ext.args", device="cuda")
    assert _embed_closure(groovy, "ext.args", device="cuda", compile=False).split() == [
        "--precision", PARAMS["precision"], "--no-compile"]


@pytest.mark.parametrize("engine, device, expected", [
    ("docker", "cpu", "--volume '/ckpt:/ckpt'"),
    ("docker", "cuda", "--volume '/ckpt:/ckpt' --gpus all"),
    ("singularity", "cuda", "--bind '/ckpt' --nv"),
    ("apptainer", "auto", "--bind '/ckpt' --nv"),
    ("apptainer", "cpu", "--bind '/ckpt'"),
    (None, "cuda", ""),
])
def test_embed_containers_see_the_checkpoints_and_their_gpus(groovy, engine, device, expected):
    assert _embed_closure(groovy, "containerOptions", engine=engine, device=device) == expected


def test_embed_without_a_checkpoint_folder_mounts_nothing(groovy):
    assert _embed_closure(groovy, "containerOptions", engine="docker", device="cpu", checkpoint_dir="") == ""


def _error_strategy(groovy, closure: str, code: int) -> str:
    return groovy.evaluate({"task": {"exitStatus": code, "attempt": 1}},
                           [("strategy", closure, True)])["strategy"]


def test_error_strategy_retries_embed_on_the_cli_codes_and_scheduler_kills(groovy):
    gpu = assignments(selector_blocks(BASE_CONFIG, "withLabel")["process_gpu"][0])["errorStrategy"]
    lost = 2**31 - 1  # Integer.MAX_VALUE: Nextflow's exit status of a task lost with its node
    retried = {code for code in [*range(0, 11), 130, 137, 139, 140, 143, lost]
               if _error_strategy(groovy, gpu, code) == "retry"}
    assert retried == {ExitCode.INTERRUPTED, ExitCode.GPU_OOM, ExitCode.DEVICE, 137, 140, 143, lost}
    assert _error_strategy(groovy, gpu, int(ExitCode.BAD_INPUT)) == "finish"


def _gpu_resource(groovy, directive: str, attempt: int, previous_exit: int | None) -> str:
    body = selector_blocks(BASE_CONFIG, "withLabel")["process_gpu"][0]
    task = {"attempt": attempt, **({"previousTrace": {"exit": previous_exit}} if previous_exit else {})}
    code = assignments(body)[directive].replace(".GB", "").replace(".h", "")  # plain numbers for the check
    return groovy.evaluate({"task": task}, [(directive, code, True)])[directive]


def test_gpu_retries_grow_only_what_the_failure_was_about(groovy):
    assert _gpu_resource(groovy, "memory", 1, None) == 48
    assert _gpu_resource(groovy, "memory", 2, 137) == 96
    assert _gpu_resource(groovy, "memory", 2, 7) == 48
    assert _gpu_resource(groovy, "time", 2, 140) == 48
    assert _gpu_resource(groovy, "time", 3, 7) == 24


def test_outputs_are_published_under_outdir_per_sample(groovy):
    blocks = selector_blocks(MODULES_CONFIG, "withName")
    params = {**PARAMS, "outdir": "/results"}
    published = {}
    for name in ("VIRNUCPRO_PREDICT", "VIRNUCPRO_EMBED", "VIRNUCPRO_PREPARE", "VIRNUCPRO_SUMMARY", "MULTIQC"):
        publish = assignments(blocks[name][0])["publishDir"]
        published[name] = groovy.evaluate({"params": params, "meta": SAMPLE},
                                          [("path", f"({publish}).path.call()", False)])["path"]
    # PREDICT's tables are <prefix>/<table> with prefix = meta.id, published under outdir
    assert published["VIRNUCPRO_PREDICT"] == "/results"
    tables = [o for o in PROCESSES["VIRNUCPRO_PREDICT"].outputs if o.emit not in ("summary", "versions_virnucpro")]
    assert all(code.startswith('"${prefix}/') for o in tables for code in o.paths)
    assert published["VIRNUCPRO_EMBED"] == "/results/sample_ab/embeddings"
    assert published["VIRNUCPRO_PREPARE"] == "/results/sample_ab"
    assert published["VIRNUCPRO_SUMMARY"] == "/results"
    assert published["MULTIQC"] == "/results/multiqc"


def test_task_shell_is_the_configured_one():
    text = (REPO / "nextflow.config").read_text()
    block = text[text.index("process.shell = ["):]
    block = block[:block.index("]") + 1]
    assert re.findall(r"'([^']+)'", block) == TASK_SHELL
