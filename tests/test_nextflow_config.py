"""The pipeline's config closures, evaluated by Groovy exactly as Nextflow evaluates them: retry
rules, the token budget after a GPU out-of-memory, the container options of EMBED, publishing;
and the start-up checks of the utils subworkflow (output folders, models folder, sample names).

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
    mask,
    matching,
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


# --------------------------------------------------------------------------------------------------
# Start-up checks of subworkflows/local/utils_virnucpro_pipeline, run by Groovy on real folders
# --------------------------------------------------------------------------------------------------

UTILS = REPO / "subworkflows" / "local" / "utils_virnucpro_pipeline" / "main.nf"

# What those functions take from Nextflow: file() gives a Path, which knows exists(),
# isDirectory(), name and toUriString() (Nextflow's FilesEx); error() stops the run with its message.
NEXTFLOW_STAND_INS = """
ExpandoMetaClass.enableGlobally()
java.nio.file.Path.metaClass.exists = { -> java.nio.file.Files.exists(delegate) }
java.nio.file.Path.metaClass.isDirectory = { -> java.nio.file.Files.isDirectory(delegate) }
java.nio.file.Path.metaClass.getName = { -> delegate.fileName.toString() }
java.nio.file.Path.metaClass.toUriString = { -> delegate.toUri().toString() }
def file(String path) { java.nio.file.Paths.get(path) }
def error(String message) { throw new IllegalStateException(message) }
def outcome(Closure call) {
    try { call(); return 'passed' } catch (IllegalStateException e) { return e.message }
}
"""


def _utils_functions(*names: str) -> str:
    """The Groovy source of the named top-level functions of the utils subworkflow."""
    text = UTILS.read_text()
    masked = mask(text)
    found = []
    for name in names:
        start = re.search(r"^def %s\(" % name, masked, re.M).start()
        found.append(text[start:matching(masked, masked.index("{", start)) + 1])
    return "\n".join(found)


def _startup_check(groovy, functions, call: str, work_dir: str = "/work-of-no-run") -> str:
    """'passed', or the message the check stops the run with."""
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions(*functions),
                      f"workflow = [workDir: file('{work_dir}')]", f"outcome {{ {call} }}"])
    return groovy.evaluate({}, [("outcome", code, False)])["outcome"]


def _outdir_check(groovy, outdir) -> str:
    return _startup_check(groovy, ["refuseNestedOutdir", "commandMarker", "canonicalPath"],
                          f"refuseNestedOutdir(file('{outdir}'))", work_dir=str(outdir.parent / "work"))


def _sample_folders_check(groovy, outdir, ids) -> str:
    return _startup_check(groovy, ["refuseCommandOutputs", "commandMarker", "quoted"],
                          f"refuseCommandOutputs({outdir!r}, {ids!r})" if outdir else f"refuseCommandOutputs(null, {ids!r})")


@pytest.mark.parametrize("marker", [".virnucpro.json", ".virnucpro.lock", ".virnucpro.lock.pid"])
def test_an_outdir_that_is_a_virnucpro_command_output_is_refused(groovy, tmp_path, marker):
    """`virnucpro prepare x.fa --outdir X` then a run with --outdir X: refused, not mixed into X."""
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / marker).write_text("")
    message = _outdir_check(groovy, tmp_path / "cli")
    assert f"--outdir {tmp_path / 'cli'} is the output folder of a virnucpro command" in message
    assert marker in message and "choose another --outdir" in message
    assert "inside" in _outdir_check(groovy, tmp_path / "cli" / "nested")


def test_the_pipelines_own_outdir_is_not_taken_for_a_command_output(groovy, tmp_path):
    """A rerun (or -resume) into the same --outdir: its published files hold no command marker."""
    outdir = tmp_path / "results"
    (outdir / "pipeline_info").mkdir(parents=True)
    (outdir / "pipeline_info" / ".virnucpro-run.lock").write_text("")
    (outdir / "sample_a").mkdir()
    (outdir / "sample_a" / "chunks.tsv").write_text("chunk_id\n")
    assert _outdir_check(groovy, outdir) == "passed"
    assert _sample_folders_check(groovy, str(outdir), ["sample_a"]) == "passed"
    assert _outdir_check(groovy, tmp_path / "fresh") == "passed"
    markers = [path for process in PROCESSES.values() for output in process.outputs for path in output.paths
               if ".virnucpro" in path]
    assert not markers, f"the pipeline declares (so may publish) a virnucpro command's marker: {markers}"


def test_a_sample_folder_that_is_a_virnucpro_command_output_is_refused(groovy, tmp_path):
    """`virnucpro prepare ... --outdir results/coding`, then sample `coding` into --outdir results."""
    outdir = tmp_path / "results"
    (outdir / "coding").mkdir(parents=True)
    (outdir / "coding" / ".virnucpro.json").write_text("{}")
    (outdir / "earlier_1").mkdir()
    message = _sample_folders_check(groovy, str(outdir), ["new_1", "coding", "earlier_1"])
    assert f"{outdir / 'coding'} (it holds .virnucpro.json)" in message
    assert "sample 'coding'" in message and "choose another --outdir or rename the sample" in message
    assert "earlier_1" not in message and "new_1" not in message
    assert _sample_folders_check(groovy, str(outdir), ["new_1", "earlier_1"]) == "passed"
    assert _sample_folders_check(groovy, None, ["coding"]) == "passed"


def _models_check(groovy, models, chunk_size) -> str:
    return _startup_check(groovy, ["checkModelsDirectory", "missingModelFiles"],
                          f"checkModelsDirectory('{models}', {chunk_size if chunk_size else 'null'})")


def test_a_models_folder_without_models_is_refused_at_start_up(groovy, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    message = _models_check(groovy, empty, 300)
    assert f"--models {empty} is not a models directory" in message
    assert f"`virnucpro models check {empty}`" in message
    assert "esm2_t36_3B_UR50D.pt" in message and "DNABERT-S" in message and "300_model.pth" in message
    assert "does not exist" in _models_check(groovy, tmp_path / "gone", 300)
    (tmp_path / "file").write_text("")
    assert "is not a directory" in _models_check(groovy, tmp_path / "file", 300)


def test_a_models_folder_with_a_manifest_or_the_standard_names_passes(groovy, tmp_path):
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    (manifest / "manifest.json").write_text("{}")
    assert _models_check(groovy, manifest, 500) == "passed"
    staged = tmp_path / "staged"
    (staged / "DNABERT-S").mkdir(parents=True)
    (staged / "esm2_t36_3B_UR50D.pt").write_text("")
    (staged / "300_model.pth").write_text("")
    assert _models_check(groovy, staged, 300) == "passed"
    assert _models_check(groovy, staged, None) == "passed"  # --classifier replaces the folder's
    message = _models_check(groovy, staged, 500)
    assert "500_model.pth" in message and "esm2" not in message


def _sample_names_check(groovy, ids) -> str:
    return _startup_check(groovy, ["checkSampleNames", "sampleNameLimit", "quoted"],
                          f"checkSampleNames({ids!r}, 'in samples.csv', 'rename the sample')")


def test_a_sample_name_too_long_for_its_files_is_refused_at_start_up(groovy):
    import json
    limit = json.loads((REPO / "assets" / "schema_input.json").read_text())["items"]["properties"]["sample"]["maxLength"]
    assert _sample_names_check(groovy, ["a" * limit, "b"]) == "passed"
    assert limit + len(".summary.tsv") <= 255  # PREDICT's <sample>.summary.tsv fits a file name
    message = _sample_names_check(groovy, ["ok", "x" * (limit + 1)])
    assert f"'{'x' * (limit + 1)}' in samples.csv is longer than {limit} characters" in message
    assert message.endswith("rename the sample")
