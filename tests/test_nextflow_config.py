"""The pipeline's config closures, evaluated by Groovy exactly as Nextflow evaluates them: retry
rules, the token budget after a GPU out-of-memory, the container options of EMBED, publishing;
and the start-up checks of the utils subworkflow (output folders, models folder, sample names).

The chain of tasks itself runs on the real engine in tests/pipeline/ (.ci/run); these checks cover
what no CPU run exercises (exit 7 from a GPU, containers with GPUs) in milliseconds. The last ones
read what `nextflow config` resolves for a profile (a few seconds each).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nextflow_helpers import (
    REPO,
    GroovyRenderer,
    assignments,
    config_params,
    java_problem,
    mask,
    matching,
    parse_pipeline,
    profile_params,
    quick_jvm,
    selector_blocks,
    serve_from_jar,
    skip_unless_ci,
    staged,
    staged_list,
)
from virnucpro import __version__
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
                   engine: str | None = None, checkpoint_dir: str = "/ckpt", profile: str = "standard",
                   previous_script: str | None = None, executor: str | None = None, meta: dict | None = None,
                   **params) -> str:
    """One closure of EMBED's withName block, evaluated for one task attempt (of a shard of sample
    `meta`); the previous attempt's trace holds its exit status and its script (Nextflow's task.previousTrace)."""
    body = selector_blocks(MODULES_CONFIG, "withName")["VIRNUCPRO_EMBED"][0]
    previous = {"exit": previous_exit, "script": previous_script}
    task = {"attempt": attempt, "executor": executor,
            **({"previousTrace": previous} if previous_exit is not None else {})}
    bindings = {"params": {**PARAMS, **params}, "task": task, "checkpoint_dir": checkpoint_dir,
                "workflow": {"containerEngine": engine, "profile": profile}, "meta": meta or {"id": "s1"}}
    return groovy.evaluate(bindings, [(key, assignments(body)[key], True)])[key]


def _embed_attempts(groovy, exits: list, **params) -> list:
    """EMBED's arguments on each attempt of one task whose attempts failed with `exits` in turn:
    each retry reads the previous attempt's script back from the trace, as Nextflow gives it."""
    args = [_embed_closure(groovy, "ext.args", **params)]
    for attempt, code in enumerate(exits, start=2):
        script = f"virnucpro_python gpu_slot.py -- virnucpro embed shard.tsv --threads 8 {args[-1]}"
        args.append(_embed_closure(groovy, "ext.args", attempt, code, previous_script=script, **params))
    return args


def _budgets(args: list) -> list:
    return [int(a.split("--token-budget ")[1].split()[0]) if "--token-budget" in a else None for a in args]


@pytest.mark.parametrize("device", ["cpu", "cuda", "auto"])
def test_a_gpu_out_of_memory_retry_halves_the_token_budget(groovy, device):
    from virnucpro import embed
    default = embed.DEFAULT_TOKEN_BUDGET["cpu" if device == "cpu" else "cuda"]
    assert _embed_closure(groovy, "ext.args", device=device) == f"--precision {PARAMS['precision']}"
    assert _embed_closure(groovy, "ext.device", device=device) == device
    oom = int(ExitCode.GPU_OOM)
    assert _budgets(_embed_attempts(groovy, [oom, oom, oom], device=device)) == \
        [None, default >> 1, default >> 2, default >> 3]
    assert _budgets(_embed_attempts(groovy, [oom, oom], device=device, token_budget=1000)) == [1000, 500, 250]
    # A retry for any other reason (time limit, kill, interruption) keeps the budget
    for code in (6, 137, 140, 143):
        assert "--token-budget" not in _embed_closure(groovy, "ext.args", 2, code, device=device,
                                                      previous_script="virnucpro embed x")
        assert _budgets(_embed_attempts(groovy, [code], device=device, token_budget=1000)) == [1000, 1000]


def test_the_token_budget_never_grows_back_over_a_tasks_attempts(groovy):
    """Halved only after a GPU out-of-memory, from the budget of the attempt that ran out, whatever
    failed in between: 137, 7, 140 gives the default, the default, half, half (not a reset to the
    default after the 140, nor a quarter for one out-of-memory)."""
    oom = int(ExitCode.GPU_OOM)
    assert _budgets(_embed_attempts(groovy, [137, oom, 140], device="cuda")) == [None, None, 32768, 32768]
    assert _budgets(_embed_attempts(groovy, [oom, 143, oom, 6], device="cpu", token_budget=800)) == \
        [800, 400, 400, 200, 200]
    # never below 64 tokens, and never raised to 64 from a smaller budget the user gave
    assert _budgets(_embed_attempts(groovy, [oom, oom], device="cpu", token_budget=100)) == [100, 64, 64]
    assert _budgets(_embed_attempts(groovy, [oom], device="cpu", token_budget=40)) == [40, 40]


def test_compile_false_asks_embed_not_to_compile(groovy):
    assert PARAMS["compile"] is True
    assert "--no-compile" not in _embed_closure(groovy, "ext.args", device="cuda")
    assert _embed_closure(groovy, "ext.args", device="cuda", compile=False).split() == [
        "--precision", PARAMS["precision"], "--no-compile"]


# Docker's `docker stop` (Nextflow's wrapper ending a task) waits the container's --stop-timeout
# before SIGKILL: EMBED's needs the time to save its checkpoint (the afterScript waits up to 300 s)
STOP = "--stop-timeout 120"


@pytest.mark.parametrize("engine, device, profile, expected", [
    ("docker", "cpu", "test,docker", f"--volume '/ckpt:/ckpt' {STOP}"),
    # --device auto (the default) on a CPU-only Docker host: no GPU asked of Docker, which would refuse
    ("docker", "auto", "docker", f"--volume '/ckpt:/ckpt' {STOP}"),
    ("docker", "auto", "docker,gpu", f"--volume '/ckpt:/ckpt' --gpus all {STOP}"),
    ("docker", "cuda", "docker", f"--volume '/ckpt:/ckpt' --gpus all {STOP}"),
    ("singularity", "cuda", "singularity", "--bind '/ckpt' --nv"),
    ("singularity", "auto", "slurm,singularity", "--bind '/ckpt'"),
    ("apptainer", "auto", "slurm,apptainer,gpu", "--bind '/ckpt' --nv"),
    ("apptainer", "cpu", "test,apptainer,gpu", "--bind '/ckpt'"),  # --device cpu given: no GPU wanted
    ("apptainer", "cpu", "apptainer", "--bind '/ckpt'"),
    (None, "cuda", "gpu", ""),
])
def test_embed_containers_see_the_checkpoints_and_gpus_only_under_the_gpu_profile(groovy, engine, device, profile,
                                                                                 expected):
    assert _embed_closure(groovy, "containerOptions", engine=engine, device=device, profile=profile) == expected


def _shell_words(options: str) -> list:
    """The words bash makes of container options written into a task's command line (nothing run)."""
    done = subprocess.run(["bash", "-c", 'for word in ' + options + '; do printf "%s\\0" "$word"; done'],
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\0")[:-1]


@pytest.mark.parametrize("checkpoint_dir", ["/home/o'brien/ck pt", "/tmp/ck';touch /tmp/pwned;'", '/tmp/a"b $HOME'])
def test_embed_mounts_a_checkpoint_folder_whatever_quotes_it_holds(groovy, checkpoint_dir):
    """A quote in --checkpoint_dir broke every EMBED under docker (exit 127), or ran what followed it."""
    docker = _embed_closure(groovy, "containerOptions", engine="docker", device="cpu", checkpoint_dir=checkpoint_dir)
    assert _shell_words(docker) == ["--volume", f"{checkpoint_dir}:{checkpoint_dir}", "--stop-timeout", "120"]
    apptainer = _embed_closure(groovy, "containerOptions", engine="apptainer", device="cpu",
                               checkpoint_dir=checkpoint_dir)
    assert _shell_words(apptainer) == ["--bind", checkpoint_dir]


def test_models_mirror_reaches_the_download_as_one_word(groovy):
    """--models_mirror was pasted unquoted into MODELS_DOWNLOAD's script (with validation off, or
    a URL the schema's pattern let through, `$(...)` ran on the launch host)."""
    body = selector_blocks(MODULES_CONFIG, "withName")["VIRNUCPRO_MODELS_DOWNLOAD"][0]
    for mirror in ["https://mirror.example.org/models/", "https://m.example/$(touch /tmp/pwned)'x;y"]:
        args = groovy.evaluate({"params": {**PARAMS, "models_mirror": mirror}, "task": {}},
                               [("ext.args", assignments(body)["ext.args"], True)])["ext.args"]
        assert _shell_words(args) == ["--mirror", mirror]


def test_embed_without_a_checkpoint_folder_mounts_nothing(groovy):
    assert _embed_closure(groovy, "containerOptions", engine="docker", device="cpu", checkpoint_dir="") == STOP
    assert _embed_closure(groovy, "containerOptions", engine="apptainer", device="cpu", checkpoint_dir="") == ""


EMBED_MODULE = REPO / "modules" / "local" / "virnucpro" / "embed" / "main.nf"
# Stand-ins for the commands the EMBED script runs: gpu_slot.py runs what follows its `--`, and
# `virnucpro embed` writes its --out file; both Python scripts, as virnucpro_python (the real one)
# runs only virnucpro's own Python
FAKE_COMMANDS = {
    "gpu_slot.py": ('#!/usr/bin/env python3\nimport os, sys\ncommand = sys.argv[sys.argv.index("--") + 1:]\n'
                    'os.execvp(command[0], command)\n'),
    "virnucpro": (f'#!{sys.executable}\nimport sys\nif sys.argv[1:] == ["--version"]:\n'
                  f'    sys.exit(print("virnucpro {__version__}"))\n'
                  'open(sys.argv[sys.argv.index("--out") + 1], "w").close()\n'),
    "require_virnucpro.sh": (REPO / "bin" / "require_virnucpro.sh").read_text(),  # the real one
    "virnucpro_python": (REPO / "bin" / "virnucpro_python").read_text(),  # the real one
    "pinned_models.py": (REPO / "bin" / "pinned_models.py").read_text(),  # the real one: no pins, no check
}
NO_FLOCK = "#!/bin/bash\necho 'flock: 9: Function not implemented' >&2\nexit 1\n"


def _embed_script(groovy) -> str:
    """EMBED's command script for one shard, rendered as Nextflow renders it."""
    text = EMBED_MODULE.read_text()
    helper = text[text.index("def shellQuoted("):]
    bindings = {"task": {"ext": {"args": "--precision fp32", "device": "cpu"}, "cpus": 2},
                "shard": staged("shard_00000.tsv"), "models": staged("models"), "models_pins": "{}",
                "checkpoint_dir": "",
                "meta": {"id": "sample_a"}, "workflow": {"manifest": {"version": __version__}}}
    return groovy.evaluate(bindings, [("script", helper + "\n" + PROCESSES["VIRNUCPRO_EMBED"].script, False)])["script"]


@pytest.mark.parametrize("flock_works", [True, False], ids=["flock", "no-flock"])
def test_embed_runs_on_a_file_system_without_flock(groovy, tmp_path, flock_works):
    """The lock only lets afterScript wait for embed's stop checkpoint: where the file system has no
    flock (Lustre mounted noflock: ENOSYS), the task warns and embeds, not fails with exit 1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {**FAKE_COMMANDS, **({} if flock_works else {"flock": NO_FLOCK})}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    (tmp_path / ".command.sh").write_text(_embed_script(groovy))
    done = subprocess.run([*TASK_SHELL, ".command.sh"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "shard_00000.h5").is_file()
    warned = "warning" in done.stderr and ".embed.running" in done.stderr
    assert warned != flock_works, done.stderr


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


def _gpu_requests(groovy, directive: str, exits: list, meta: dict | None = None) -> list:
    """EMBED's `directive` request on each attempt of a task whose attempts failed with `exits` in
    turn, in GB or hours: the previous attempt's trace holds what that attempt asked for (Nextflow
    records memory in bytes and time in ms; plain numbers of one unit here)."""
    body = selector_blocks(BASE_CONFIG, "withLabel")["process_gpu"][0]
    code = re.sub(r"(\d+)\.(GB|h)(\.(toBytes|toMillis)\(\))?", r"\1", assignments(body)[directive])
    meta = meta or {"id": "s1"}
    requests = [groovy.evaluate({"task": {"attempt": 1}, "meta": meta}, [(directive, code, True)])[directive]]
    for attempt, code_before in enumerate(exits, start=2):
        previous = {"exit": code_before, directive: requests[-1]}
        task = {"attempt": attempt, "previousTrace": previous}
        requests.append(groovy.evaluate({"task": task, "meta": meta}, [(directive, code, True)])[directive])
    return requests


def test_gpu_retries_grow_only_what_the_failure_was_about(groovy):
    assert _gpu_requests(groovy, "memory", [137, 137, 137]) == [48, 96, 144, 192]
    assert _gpu_requests(groovy, "memory", [7, 8, 143]) == [48, 48, 48, 48]
    assert _gpu_requests(groovy, "time", [140, 140, 140]) == [24, 48, 72, 96]
    assert _gpu_requests(groovy, "time", [7, 137, 6]) == [24, 24, 24, 24]


@pytest.mark.parametrize("exits", [[137, 140, 7], [140, 137, 143], [137, 7, 137], [140, 6, 140]])
def test_gpu_retries_never_take_back_an_earlier_increase(groovy, exits):
    """137 then 140 asked for 96 GB and then 48 GB again: each retry now starts from what the
    previous attempt asked for."""
    for directive, grows_on in (("memory", 137), ("time", 140)):
        requests = _gpu_requests(groovy, directive, exits)
        step = requests[0]
        expected = [step + step * sum(1 for code in exits[:i] if code == grows_on) for i in range(len(exits) + 1)]
        assert requests == expected, f"{directive} after {exits}: {requests}"


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


PUBLISHED_INPUTS_OF_LATER_TASKS = ("VIRNUCPRO_PREPARE", "VIRNUCPRO_EMBED", "VIRNUCPRO_VERSIONS")


@pytest.mark.parametrize("mode", ["copy", "copyNoFollow", "link", "rellink", "symlink", "move"])
def test_publish_dir_mode_move_copies_what_later_tasks_still_read(groovy, mode):
    """--publish_dir_mode move would take PREPARE's folder, EMBED's shards and the versions file from
    under the tasks that read them (a -resume would find them gone): those are copied, the rest moved
    (a mutation review: the rule could be dropped unseen)."""
    blocks = selector_blocks(MODULES_CONFIG, "withName")
    for name in (*PUBLISHED_INPUTS_OF_LATER_TASKS, "VIRNUCPRO_PREDICT", "VIRNUCPRO_SUMMARY", "MULTIQC"):
        publish = assignments(blocks[name][0])["publishDir"]
        found = groovy.evaluate({"params": {**PARAMS, "publish_dir_mode": mode}, "meta": SAMPLE},
                                [("mode", f"({publish}).mode", False)])["mode"]
        expected = "copy" if mode == "move" and name in PUBLISHED_INPUTS_OF_LATER_TASKS else mode
        assert found == expected, f"{name} under --publish_dir_mode {mode}: {found}"


def test_prepare_cuts_at_the_runs_chunk_size_and_shard_size(groovy):
    """--chunk_size and --shard_size reach `virnucpro prepare` (a mutation review: without them a
    --chunk_size 300 run chunked at 500, embedded every shard and then failed in PREDICT)."""
    body = selector_blocks(MODULES_CONFIG, "withName")["VIRNUCPRO_PREPARE"][0]
    args = groovy.evaluate({"params": {**PARAMS, "chunk_size": 300, "shard_size": 1234}},
                           [("args", assignments(body)["ext.args"], True)])["args"]
    assert args.split() == ["--chunk-size", "300", "--shard-size", "1234"]


@pytest.mark.parametrize("protein", [True, False], ids=["bad-input", "sound"])
def test_prepares_bad_input_says_which_samplesheet_file_a_staged_name_is(groovy, tmp_path, protein):
    """A review's case: PREPARE's error named `input/2/x.fq`, the task's copy, not a path the user has.
    The real task script, with the real virnucpro: on bad input (exit 3, kept) a note says what those
    names are and where the run's table maps them; a sound run says nothing more."""
    bindings = {"task": {"ext": {"args": ""}, "cpus": 1}, "meta": {"id": "s28"},
                "reads": staged_list(["input/1/x.fq", "input/2/x.fq"]),
                "workflow": {"manifest": {"version": __version__}}}
    script = groovy.evaluate(bindings, [("script", PROCESSES["VIRNUCPRO_PREPARE"].script, False)])["script"]
    for index, record in ((1, "@a\nACGTACGTAAAT\n+\nIIIIIIIIIIII\n"),
                          (2, "@bad\nMKLLVILLAAIL\n+\nIIIIIIIIIIII\n" if protein else "@b\nACGTTTGA\n+\nIIIIIIII\n")):
        (tmp_path / "input" / str(index)).mkdir(parents=True)
        (tmp_path / "input" / str(index) / "x.fq").write_text(record)
    path = os.pathsep.join([str(REPO / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])
    done = subprocess.run(["bash", "-ue", "-c", script], cwd=tmp_path, env={**os.environ, "PATH": path},
                          capture_output=True, text=True, timeout=300)
    note = ("note: input/N/<name> is this task's copy of the N-th file of sample s28 in the samplesheet; "
            "<outdir>/pipeline_info/inputs_<start>.tsv of this run gives the path of each")
    if protein:
        assert done.returncode == ExitCode.BAD_INPUT and "input/2/x.fq, record 'bad'" in done.stderr, done.stderr
        assert done.stderr.rstrip().endswith(note), done.stderr
    else:
        assert done.returncode == 0 and "note:" not in done.stderr, done.stderr


def _predict_script(groovy, ext: dict, classifier_sha256: str, shards: int = 1) -> str:
    """PREDICT's command script for sample s1 of `shards` shards, rendered as Nextflow renders it."""
    names = [f"_input/embeddings/shard_{index:05d}.h5" for index in range(shards)]
    bindings = {"task": {"ext": ext, "cpus": 2}, "meta": {"id": "s1"}, "prepared": staged("_input/prepared"),
                "embeddings": staged_list(names),
                "classifier_files": staged_list(["_input/models/manifest.json", "_input/models/500_model.pth"]),
                "classifier_sha256": classifier_sha256, "user_classifier": False,
                "workflow": {"manifest": {"version": __version__}}}
    return groovy.evaluate(bindings, [("script", PROCESSES["VIRNUCPRO_PREDICT"].script, False)])["script"]


@pytest.mark.parametrize("threshold", [0.3, 0.9])
def test_predict_calls_at_the_runs_threshold_and_checks_the_classifier_the_run_started_with(groovy, threshold):
    """--threshold reaches `virnucpro predict`, and the classifier's sha256 read at the start reaches
    the check after it (a mutation review: either could be dropped, every call made at 0.5 and the
    check skipped, with the engine tests green: they run at the default threshold)."""
    body = selector_blocks(MODULES_CONFIG, "withName")["VIRNUCPRO_PREDICT"][0]
    ext = groovy.evaluate({"params": {**PARAMS, "threshold": threshold}, "meta": {"id": "s1"}},
                          [("args", assignments(body)["ext.args"], True), ("prefix", assignments(body)["ext.prefix"], True)])
    script = _predict_script(groovy, ext, "ab" * 32)
    words = script.split()
    assert words[words.index("--threshold") + 1] == str(threshold) and "--outdir s1" in " ".join(words), script
    assert f"pinned_models.py --classifier-sha256 {'ab' * 32} --run-info s1/run_info.json" in " ".join(words), script
    unknown = _predict_script(groovy, ext, "")  # no pinned classifier: the check has nothing to compare
    assert "pinned_models.py virnucpro_python virnucpro_summary.py" in " ".join(unknown.split()), unknown


def test_predict_gets_the_shards_folder_not_every_name(groovy):
    """A scale review's case: every shard's name on PREDICT's command line passed the system's limit
    (ARG_MAX) past about 51,000 shards, exit 126 after every EMBED task had run; prepare allows
    100,000. The folder the shards are staged in is passed instead."""
    body = selector_blocks(MODULES_CONFIG, "withName")["VIRNUCPRO_PREDICT"][0]
    ext = groovy.evaluate({"params": PARAMS, "meta": {"id": "s1"}},
                          [("args", assignments(body)["ext.args"], True), ("prefix", assignments(body)["ext.prefix"], True)])
    script = _predict_script(groovy, ext, "", shards=3000)
    words = script.split()
    assert words[words.index("--embeddings") + 1] == "_input/embeddings" and "shard_00000.h5" not in script, script
    staged_as = {name: stage for i in PROCESSES["VIRNUCPRO_PREDICT"].inputs for _, name, stage in i.names}
    assert staged_as["embeddings"] == "'_input/embeddings/*'", staged_as


@pytest.mark.parametrize("device", ["cpu", "cuda", "auto"])
def test_embed_runs_on_the_device_the_run_asked_for(groovy, device):
    """--device reaches EMBED's slot claim and `virnucpro embed` (a mutation review: an `auto` there
    ran a --device cpu run on a node's GPU, and a --device cuda run on a node without one)."""
    assert _embed_closure(groovy, "ext.device", device=device) == device


def test_slurm_sends_only_embed_to_the_gpu_queue_and_warns_only_embed_before_its_time_limit(groovy):
    """--slurm_gpu_queue takes EMBED alone (the CPU tasks would hold GPU allocations there), and only
    EMBED asks SLURM for SIGUSR2 60 s before its limit, to save its checkpoint (a mutation review)."""
    slurm = (REPO / "conf" / "slurm.config").read_text()
    closures = [("queue", re.search(r"queue    = (\{.*?\n    \})", slurm, re.S).group(1), True),
                ("options", re.search(r"clusterOptions = (\{.*?\n    \})", slurm, re.S).group(1), True)]
    found = {}
    for label, gpu_queue in (("process_gpu", "gpu"), ("process_low", "gpu"), ("process_gpu", "")):
        params = {**PARAMS, "slurm_queue": "cpu", "slurm_gpu_queue": gpu_queue, "device": "cpu"}
        found[label, gpu_queue] = groovy.evaluate({"params": params, "task": {"label": [label]},
                                                   "workflow": {"profile": "slurm"}, "meta": {"id": "s1"}}, closures)
    assert [found[key]["queue"] for key in found] == ["gpu", "cpu", "cpu"]
    assert [(found[key]["options"] or "").split() for key in found] == [["--signal=B:USR2@60"], [],
                                                                         ["--signal=B:USR2@60"]]


def test_the_shard_of_a_sample_with_no_orf_asks_for_no_gpu_anywhere(groovy):
    """Embed writes it without a model (`meta.no_orf`, set by the workflow from the shard): no GPU
    from SLURM, the cloud executors or the container, no GPU queue, the CPU, one CPU and a CPU task's
    memory and time; a shard with records of the same sample asks for all of it."""
    slurm = (REPO / "conf" / "slurm.config").read_text()
    closures = [("queue", re.search(r"queue    = (\{.*?\n    \})", slurm, re.S).group(1), True),
                ("options", re.search(r"clusterOptions = (\{.*?\n    \})", slurm, re.S).group(1), True),
                ("accelerator", assignments(BASE_CONFIG)["accelerator"], True)]
    gpu_block = assignments(selector_blocks(BASE_CONFIG, "withLabel")["process_gpu"][0])
    params = {**PARAMS, "slurm_queue": "cpu", "slurm_gpu_queue": "gpu", "device": "cuda"}
    for meta, gpu in (({"id": "s1", "no_orf": True}, False), ({"id": "s1"}, True)):
        bindings = {"params": params, "task": {"label": ["process_gpu"], "attempt": 1},
                    "workflow": {"profile": "slurm,gpu"}, "meta": meta}
        found = groovy.evaluate(bindings, [*closures, ("cpus", gpu_block["cpus"], True)])
        assert (found["queue"], "--gres=gpu:1" in found["options"], found["accelerator"], found["cpus"]) == (
            ("gpu", True, 1, 8) if gpu else ("cpu", False, None, 1)), found
        options = _embed_closure(groovy, "containerOptions", engine="docker", device="cuda", meta=meta)
        assert ("--gpus all" in options) == gpu, options
        assert _embed_closure(groovy, "ext.device", device="cuda", meta=meta) == ("cuda" if gpu else "cpu")
        machine = _base_closure(groovy, "machineType", {"label": ["process_gpu"], "executor": "google-batch"},
                                profile="google,gpu", meta=meta, device="cuda", gpu_type="nvidia-l4")
        assert (machine is not None) == gpu, machine
    assert _gpu_requests(groovy, "memory", [137], meta={"id": "s1", "no_orf": True}) == [6, 12]
    assert _gpu_requests(groovy, "time", [140], meta={"id": "s1", "no_orf": True}) == [4, 8]


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
# isDirectory(), mkdirs(), name and toUriString() (Nextflow's FilesEx: a local file's path as it is,
# a remote one's URI); error() stops the run with its message.
NEXTFLOW_STAND_INS = """
ExpandoMetaClass.enableGlobally()
java.nio.file.Path.metaClass.exists = { -> java.nio.file.Files.exists(delegate) }
java.nio.file.Path.metaClass.isDirectory = { -> java.nio.file.Files.isDirectory(delegate) }
java.nio.file.Path.metaClass.getName = { -> delegate.fileName.toString() }
java.nio.file.Path.metaClass.toUriString = { -> delegate.toUri().scheme == 'file' ? delegate.toString() : delegate.toUri().toString() }
java.nio.file.Path.metaClass.mkdirs = { -> java.nio.file.Files.createDirectories(delegate); true }
def file(String path) { java.nio.file.Paths.get(path) }
def file(Map options, String path) { file(path) }
def error(String message) { throw new IllegalStateException(message) }
def outcome(Closure call) {
    try { call(); return 'passed' } catch (IllegalStateException e) { return e.message }
}
"""


def _utils_functions(*names: str, source: Path = UTILS) -> str:
    """The Groovy source of the named top-level functions of the utils subworkflow (or `source`)."""
    text = source.read_text()
    masked = mask(text)
    found = []
    for name in names:
        start = re.search(r"^def %s\(" % name, masked, re.M).start()
        found.append(text[start:matching(masked, masked.index("{", start)) + 1])
    return "\n".join(found)


def _startup_check(groovy, functions, call: str, work_dir: str = "/work-of-no-run", reports: str = "") -> str:
    """'passed', or the message the check stops the run with (`reports`: the Groovy map of the run's
    report settings, trace, report, timeline and dag, as Nextflow's configuration holds them)."""
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions(*functions),
                      f"workflow = [workDir: file('{work_dir}'), session: [config: {reports or '[:]'}]]",
                      f"outcome {{ {call} }}"])
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
    return _startup_check(groovy, ["checkModelsDirectory", "missingModelFiles", "checkManifestClassifier", "readModelsManifest",
                                   "checkManifestFiles", "sha256Of", "quoted"],
                          f"checkModelsDirectory('{models}', {chunk_size if chunk_size else 'null'})")


def _classifier_check(groovy, classifier, chunk_size, models=None) -> str:
    return _startup_check(groovy, ["checkClassifierChunkSize", "sha256Of", "readModelsManifest", "recordsClassifierOfSize"],
                          f"checkClassifierChunkSize('{classifier}', {chunk_size}, {repr(str(models)) if models else 'null'})")


def test_a_classifier_its_manifest_records_for_the_other_chunk_size_is_refused_at_start_up(groovy, tiny_models,
                                                                                           tmp_path):
    """Found by PREDICT, it cost every EMBED task first."""
    message = _classifier_check(groovy, tiny_models / "300_model_tiny.pth", 500)
    assert f"--classifier {tiny_models / '300_model_tiny.pth'} is the classifier for 300-bp chunks" in message
    assert "--chunk_size is 500" in message and "--chunk_size 300" in message, message
    assert _classifier_check(groovy, tiny_models / "300_model_tiny.pth", 300) == "passed"
    assert _classifier_check(groovy, tiny_models / "500_model_tiny.pth", 500) == "passed"
    assert _classifier_check(groovy, tiny_models / "300_model_tiny.pth", 400) == "passed"  # any classifier there
    alone = tmp_path / "alone"  # no manifest beside it: PREDICT checks the published checksums
    alone.mkdir()
    (alone / "300_model.pth").write_bytes((tiny_models / "300_model_tiny.pth").read_bytes())
    assert _classifier_check(groovy, alone / "300_model.pth", 500) == "passed"
    (alone / "manifest.json").write_text("{not json")  # left to PREDICT, which names what is wrong
    assert _classifier_check(groovy, alone / "300_model.pth", 500) == "passed"
    upper = tmp_path / "upper"  # a manifest of upper-case checksums, which `models check` verifies (a review's case)
    shutil.copytree(tiny_models, upper)
    manifest = json.loads((upper / "manifest.json").read_text())
    manifest["models"]["classifier_300"]["sha256"] = {k: v.upper() for k, v in manifest["models"]["classifier_300"]["sha256"].items()}
    (upper / "manifest.json").write_text(json.dumps(manifest))
    assert "is the classifier for 300-bp chunks" in _classifier_check(groovy, upper / "300_model_tiny.pth", 500)


def test_a_models_folder_lacking_a_file_its_manifest_lists_is_refused_at_start_up(groovy, tiny_models, tmp_path):
    """A reviewer's case: found by EMBED after PREPARE (an encoder file) or by PREDICT after every EMBED
    task (the classifier), each named by its path inside the task; a file the run does not use is no
    matter (the classifier of the other chunk size, or any with --classifier)."""
    models = Path(shutil.copytree(tiny_models, tmp_path / "models"))
    (models / "500_model_tiny.pth").unlink()
    message = _models_check(groovy, models, 500)
    assert f"--models {models}: its manifest.json lists '500_model_tiny.pth', which the folder lacks" in message, message
    assert _models_check(groovy, models, 300) == "passed" and _models_check(groovy, models, None) == "passed"
    (models / "esm2_tiny.pt").unlink()
    assert "lists 'esm2_tiny.pt', which the folder lacks" in _models_check(groovy, models, None)


def test_a_damaged_classifier_in_the_models_folder_is_refused_at_start_up(groovy, tiny_models, tmp_path):
    """A reviewer's case: start-up hashed it for PREDICT, and PREDICT refused it after every EMBED task."""
    models = Path(shutil.copytree(tiny_models, tmp_path / "models"))
    with open(models / "500_model_tiny.pth", "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 1]))
    message = _models_check(groovy, models, 500)
    assert f"--models {models}: 500_model_tiny.pth has sha256" in message and "a corrupt or replaced file" in message
    assert _models_check(groovy, models, 300) == "passed"


def test_a_copied_classifier_the_models_manifest_records_for_the_other_chunk_size_is_refused(groovy, tiny_models,
                                                                                             tmp_path):
    """A reviewer's case: a copy of the 300-bp classifier with no manifest beside it, at --chunk_size
    500 with the --models whose manifest records it: the pipeline scored every sample with it (PREDICT
    is not given --models), where `virnucpro run` refuses it."""
    (tmp_path / "copy").mkdir()
    copy = Path(shutil.copy(tiny_models / "300_model_tiny.pth", tmp_path / "copy"))
    message = _classifier_check(groovy, copy, 500, tiny_models)
    assert f"--classifier {copy} is the classifier for 300-bp chunks ({tiny_models / 'manifest.json'} records it)" in message
    assert _classifier_check(groovy, copy, 300, tiny_models) == "passed"
    assert _classifier_check(groovy, copy, 500) == "passed"  # nothing records it: PREDICT checks the published ones


def _record_check(groovy, classifier) -> str:
    return _startup_check(groovy, ["checkClassifierRecord", "sha256Of", "readModelsManifest"],
                          f"checkClassifierRecord('{classifier}')")


def test_a_classifier_its_folders_manifest_records_with_other_bytes_is_refused_at_start_up(groovy, tiny_models,
                                                                                           tmp_path):
    """A damaged classifier given with --classifier was found by PREDICT, after every EMBED task, and
    named a folder inside the task; a link to the user's own file under a recorded name passes."""
    damaged = Path(shutil.copytree(tiny_models, tmp_path / "damaged"))
    with open(damaged / "500_model_tiny.pth", "ab") as handle:
        handle.write(b"x")
    message = _record_check(groovy, damaged / "500_model_tiny.pth")
    assert f"--classifier {damaged / '500_model_tiny.pth'} has sha256" in message, message
    assert f"but {damaged / 'manifest.json'} records" in message and "a corrupt or replaced file" in message, message
    assert _record_check(groovy, tiny_models / "500_model_tiny.pth") == "passed"
    (tmp_path / "links").mkdir()
    (damaged / "mine.pth").write_bytes((damaged / "500_model_tiny.pth").read_bytes())  # the user's own, recorded nowhere
    (tmp_path / "links" / "500_model_tiny.pth").symlink_to(damaged / "mine.pth")
    assert _record_check(groovy, tmp_path / "links" / "500_model_tiny.pth") == "passed"
    (tmp_path / "links" / "via.pth").symlink_to(damaged / "500_model_tiny.pth")  # the damaged file by another name
    assert "a corrupt or replaced file" in _record_check(groovy, tmp_path / "links" / "via.pth")


def test_a_linked_classifier_is_staged_under_the_name_its_manifest_knows(groovy, tiny_models, tmp_path):
    """Staged under the link's name beside its target's manifest, the user's own classifier was taken
    for the file that manifest records under that name, and PREDICT refused a correct run (exit 4)."""
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "500_model_tiny.pth").symlink_to(tiny_models / "300_model_tiny.pth")
    (tmp_path / "beside").mkdir()
    (tmp_path / "beside" / "manifest.json").write_text((tiny_models / "manifest.json").read_text())
    (tmp_path / "beside" / "mine.pth").write_bytes(b"x")
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "mine.pth").write_bytes(b"x")
    calls = ", ".join(f"userClassifierFiles(file('{path}'))" + NAMES_JOINED.removesuffix(")")
                      for path in (tmp_path / "links" / "500_model_tiny.pth", tmp_path / "beside" / "mine.pth",
                                   tmp_path / "alone" / "mine.pth"))
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions("userClassifierFiles"),
                      "java.nio.file.Path.metaClass.isFile = { -> java.nio.file.Files.isRegularFile(delegate) }",
                      f"outcome {{ error([{calls}].join(' ')) }}"])
    staged = groovy.evaluate({}, [("outcome", code, False)])["outcome"]
    assert staged.split(" ") == ["300_model_tiny.pth,manifest.json", "mine.pth,manifest.json", "mine.pth"], staged


NAMES_JOINED = ".collect { p -> p.fileName.toString() }.join(','))"  # (no f-string: nf-core lint refuses doubled braces)


def test_predict_is_given_the_manifest_and_the_classifier_of_the_chunk_size(groovy, tiny_models, tmp_path):
    """classifierFiles: what PREDICT stages from the models folder (the manifest pins the checksum)."""
    def staged(folder, chunk_size):
        return _startup_check(groovy, ["classifierFiles", "readModelsManifest"],
                              f"error(classifierFiles(file('{folder}'), {chunk_size})" + NAMES_JOINED)
    assert staged(tiny_models, 500) == "manifest.json,500_model_tiny.pth"
    assert staged(tiny_models, 300) == "manifest.json,300_model_tiny.pth"
    (tmp_path / "manifest.json").write_text("")
    assert staged(tmp_path, 300) == f"{tmp_path}: its manifest.json is empty (a copy or download cut short?) " \
                                    f"(see `virnucpro models check {tmp_path}`)"


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
    (manifest / "manifest.json").write_text('{"models": {"classifier_500": {"files": ["500_model.pth"]}}}')
    (manifest / "500_model.pth").write_text("")
    assert _models_check(groovy, manifest, 500) == "passed"
    assert _models_check(groovy, manifest, None) == "passed"
    staged = tmp_path / "staged"
    (staged / "DNABERT-S").mkdir(parents=True)
    (staged / "esm2_t36_3B_UR50D.pt").write_text("")
    (staged / "300_model.pth").write_text("")
    assert _models_check(groovy, staged, 300) == "passed"
    assert _models_check(groovy, staged, None) == "passed"  # --classifier replaces the folder's
    message = _models_check(groovy, staged, 500)
    assert "500_model.pth" in message and "esm2" not in message


def test_a_models_manifest_without_the_chunk_sizes_classifier_is_refused_at_start_up(groovy, tiny_models, tmp_path):
    """Found when the workflow picked the classifier, it was said twice, after the tasks had started."""
    import json
    models = Path(shutil.copytree(tiny_models, tmp_path / "models"))
    manifest = json.loads((tiny_models / "manifest.json").read_text())
    del manifest["models"]["classifier_500"]
    (models / "manifest.json").write_text(json.dumps(manifest))
    message = _models_check(groovy, models, 500)
    assert message.startswith(f"--models {models} has no classifier for --chunk_size 500"), message
    assert "for --chunk_size 300 only; give that --chunk_size, or a --classifier for 500-bp chunks" in message
    assert f"`virnucpro models check {models}`" in message
    assert _models_check(groovy, models, 300) == "passed"
    assert _models_check(groovy, models, None) == "passed"  # --classifier given: the folder's is not used
    (models / "manifest.json").write_text('{"models": {}}')
    assert "(its manifest.json records none): give a --classifier for 300-bp chunks" in _models_check(groovy, models, 300)
    (models / "manifest.json").write_text('{"models": ')
    message = _models_check(groovy, models, 300)
    assert message.startswith(f"--models {models}: its manifest.json cannot be read as JSON ("), message
    (models / "manifest.json").write_bytes(b'{"models": {"x": "\xe9"}}')  # Latin-1
    assert _models_check(groovy, models, 300) == f"--models {models}: its manifest.json is not UTF-8 text; " \
        f"`virnucpro models check {models}` says what is wrong, `virnucpro models download` writes a complete one"
    (models / "manifest.json").write_text("")  # a copy cut short: JsonSlurper throws no JsonException
    assert _models_check(groovy, models, 300).startswith(f"--models {models}: its manifest.json is empty"), message
    (models / "manifest.json").unlink()
    (models / "manifest.json").mkdir()
    message = _models_check(groovy, models, 300)
    assert message.startswith(f"--models {models}: its manifest.json cannot be read as JSON (") and "irectory" in message
    assert _models_check(groovy, tiny_models, 500) == "passed"


@pytest.mark.parametrize("sinfo, types", [
    ("gpu:a100:4(S:0-1),gpu:h100:2\ngpu:a100:2\n", ["a100", "h100"]),
    ("gpu:2\n(null)\n", [None]),
    ("gpu:2(S:0),shard:8\ngpu:l4:1\n", [None, "l4"]),
    ("(null)\n", []),
    ("", []),
])
def test_the_gpu_types_of_a_slurm_cluster_are_read_from_sinfo(groovy, sinfo, types):
    """--gpu_type is checked at start-up against `sinfo --format=%G` (gpu:<type>:<count>)."""
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions("slurmGpuTypes"),
                      "found = groovy.json.JsonOutput.toJson(slurmGpuTypes(sinfo))"])
    assert json.loads(groovy.evaluate({"sinfo": sinfo}, [("found", code, False)])["found"]) == types


SAMPLE_NAME_FUNCTIONS = ["checkSampleNames", "sampleNameLimit", "quoted", "runOwnNames", "unfinishedMarkName"]


def _sample_names_check(groovy, ids) -> str:
    return _startup_check(groovy, SAMPLE_NAME_FUNCTIONS,
                          f"checkSampleNames({ids!r}, 'in samples.csv', 'rename the sample')")


def test_a_sample_name_too_long_for_its_files_is_refused_at_start_up(groovy):
    import json
    limit = json.loads((REPO / "assets" / "schema_input.json").read_text())["items"]["properties"]["sample"]["maxLength"]
    assert _sample_names_check(groovy, ["a" * limit, "b"]) == "passed"
    assert limit + len(".summary.tsv") <= 255  # PREDICT's <sample>.summary.tsv fits a file name
    message = _sample_names_check(groovy, ["ok", "x" * (limit + 1)])
    assert f"'{'x' * (limit + 1)}' in samples.csv is longer than {limit} characters" in message
    assert message.endswith("rename the sample")


@pytest.mark.parametrize("name", ["RUN_UNFINISHED.txt", "run_unfinished.TXT", "multiqc", "virnucpro_summary.tsv"])
def test_a_sample_named_as_one_of_the_runs_own_results_is_refused_at_start_up(groovy, name):
    """A review's case: a sample named RUN_UNFINISHED.txt passed the start-up checks, ran every task,
    then failed to publish its folder over the run's mark."""
    assert "is reserved for the run's own results" in _sample_names_check(groovy, ["ok", name])


def in_jvm_locale(tag: str, expression: str) -> str:
    """Groovy evaluating `expression` with the JVM's default locale set to `tag`, as LANG sets it."""
    switch = f"def was = Locale.getDefault(); Locale.setDefault(Locale.forLanguageTag('{tag}')); def value; "
    return switch + "try { value = { -> " + expression + " }() } finally { Locale.setDefault(was) }; value"


@pytest.mark.parametrize("ids, said", [(["sampleI", "samplei"], "differ only in case"),
                                       (["PIPELINE_INFO"], "reserved")])
def test_sample_name_checks_are_the_same_in_a_turkish_jvm(groovy, ids, said):
    """With LANG=tr_TR the JVM lower-cases 'I' to a dotless 'ı': 'sampleI' and 'samplei' (one folder
    on a case-insensitive file system) passed, and so did PIPELINE_INFO."""
    call = f"checkSampleNames({ids!r}, 'in samples.csv', 'rename the sample')"
    assert said in _startup_check(groovy, SAMPLE_NAME_FUNCTIONS, in_jvm_locale("tr-TR", call))


# Characters Nextflow 24.10 leaves unescaped when it stages a file or names it in a task's script
UNSAFE = {"$": "'$'", "`": "'`'", "{": "'{'", "}": "'}'", "[": "'['", "]": "']'", "*": "'*'", "?": "'?'",
          "\t": "a tab", "\n": "a line break", "\x01": "the control character U+0001",
          "\x7f": "the control character U+007F"}


def _path_check(groovy, what: str, path: str) -> str:
    """'passed', or the message a user's path is refused with (given as a binding: it may hold anything)."""
    code = "\n".join([NEXTFLOW_STAND_INS,
                      _utils_functions("refuseUnsafePaths", "unsafePathProblem", "printablePath", "describeCharacter"),
                      "outcome { refuseUnsafePaths([unsafePathProblem(what, file(path))]) }"])
    return groovy.evaluate({"what": what, "path": path}, [("outcome", code, False)])["outcome"]


@pytest.mark.parametrize("character", sorted(UNSAFE), ids=lambda c: f"U+{ord(c):04X}")
def test_a_path_nextflow_would_not_escape_is_refused_naming_it_and_the_character(groovy, character):
    """`g[12]/r.fa` staged g1/r.fa, `v$HOME/r.fa` staged v/root/r.fa, `${X=$(touch ..)}${X@P}`
    ran a command: refused before any task, with the path, the character and the way out."""
    path = f"/data/run{character}1/reads.fa"
    message = _path_check(groovy, "--classifier", path)
    shown = path.replace("\t", "\\t").replace("\n", "\\n").replace("\x01", "\\u0001").replace("\x7f", "\\u007F")
    lines = message.splitlines()
    assert len(lines) == 3 and lines[1] == f"  --classifier {shown}: {UNSAFE[character]}", message
    assert "Rename the file or folder, or make a link to it" in lines[2], message
    assert "\t" not in message and "\r" not in message, "the message holds the raw control character"


def test_paths_nextflow_escapes_pass(groovy):
    """Spaces, quotes, `;&|()<>!`, a leading '-' and non-ASCII letters are escaped when staged."""
    assert _path_check(groovy, "--models", "/data/my run/q'uo\"te;&|(x)<y>!/-n ü.fa") == "passed"


def _parameter_paths_check(groovy, parameters: dict, launch_dir: str = "/launch", work_dir: str = "/launch/work",
                           profile: str = "standard") -> str:
    code = "\n".join([NEXTFLOW_STAND_INS,
                      _utils_functions("checkParameterPaths", "refuseUnsafePaths", "unsafePathProblem", "printablePath",
                                       "describeCharacter", "isRelativePath", "launchFolderProblem",
                                       "refuseModelsStoreBatchCannotKeep", "batchExecutor", "downloadsModels"),
                      f"workflow = [launchDir: file(launch_dir), workDir: file(work_dir), profile: '{profile}']",
                      "outcome { checkParameterPaths(parameters) }"])
    bindings = {"parameters": parameters, "launch_dir": launch_dir, "work_dir": work_dir}
    return groovy.evaluate(bindings, [("outcome", code, False)])["outcome"]


def test_every_parameter_path_holding_such_a_character_is_named_at_once(groovy):
    """--outdir 'r[1] x' and --models '/tmp/m[12]' stopped with a Groovy error about `toUri`;
    --checkpoint_dir 'ck[1]' was dropped without a word (no checkpoints, no GPU slots)."""
    message = _parameter_paths_check(groovy, {
        "outdir": "/r/r[1] x", "models": "/tmp/m[12]", "classifier": "/c/c$1.pth", "checkpoint_dir": "/ck/ck[1]",
        "models_store": "/s/st{x}", "input": "/in/*.fa", "slurm_options": "--x=[1]"})
    lines = message.splitlines()[1:-1]
    assert [line.strip().split(":")[0] for line in lines] == [
        "--outdir /r/r[1] x", "--models /tmp/m[12]", "--classifier /c/c$1.pth", "--checkpoint_dir /ck/ck[1]"], message
    # the models store is a path of the run where the models are downloaded (no --models)
    message = _parameter_paths_check(groovy, {"outdir": "/r/results", "models": None, "models_store": "/s/st{x}"})
    assert message.splitlines()[1].startswith("  --models_store /s/st{x}: "), message
    good = {"outdir": "/r/results", "models": "/m/my models", "classifier": None, "checkpoint_dir": "",
            "models_store": "virnucpro-models", "input": "/in/*.fa"}
    assert _parameter_paths_check(groovy, good) == "passed"


def test_a_work_folder_a_task_script_would_misread_is_refused_naming_it(groovy):
    """-work-dir 'w $HOME' passed start-up, then every task failed on `touch .../.command.begin`."""
    message = _parameter_paths_check(groovy, {"outdir": "/r/results"}, work_dir="/data/w $HOME")
    assert message.splitlines()[1] == "  -work-dir (the work folder) /data/w $HOME: '$'", message
    assert _parameter_paths_check(groovy, {"outdir": "/r/results"}, work_dir="/data/w x") == "passed"


def test_a_launch_folder_a_task_script_would_misread_is_named_with_what_it_spoils(groovy):
    """From a launch folder holding `$`, --outdir results and the default work folder failed every
    task late; the refusal named --models_store, which the user never gave, not the launch folder."""
    parameters = {"outdir": "results", "models_store": "virnucpro-models", "models": None}
    message = _parameter_paths_check(groovy, parameters, launch_dir="/x/a$b", work_dir="/x/a$b/work")
    lines = message.splitlines()[1:-1]
    assert len(lines) == 1, message
    assert lines[0].startswith("  the launch folder /x/a$b: '$' (--outdir results, --models_store virnucpro-models "
                               "and the default work folder (work) are resolved from it: launch from another folder"), message
    # absolute paths and a work folder elsewhere: the launch folder is no task's business
    elsewhere = {"outdir": "/r/results", "models": "/m/models"}
    assert _parameter_paths_check(groovy, elsewhere, launch_dir="/x/a$b", work_dir="/w/work") == "passed"


@pytest.mark.parametrize("given", [{"models": "/m/models"}, {"tiny_models": True}], ids=["models", "tiny"])
def test_the_default_models_store_counts_only_when_the_models_are_downloaded(groovy, given):
    """A review's case: from a launch folder 'bad[1]', with --models (or the tiny models), absolute
    paths and the work folder elsewhere, the run was refused for --models_store, whose default is
    relative but which only the models download (not run then) uses."""
    parameters = {"outdir": "/r/results", "models_store": "virnucpro-models", **given}
    assert _parameter_paths_check(groovy, parameters, launch_dir="/x/bad[1]", work_dir="/w/work") == "passed"
    message = _parameter_paths_check(groovy, {**parameters, "outdir": "results"}, launch_dir="/x/bad[1]",
                                     work_dir="/w/work")
    assert "(--outdir results is resolved from it" in message and "--models_store" not in message, message


def _inputs_check(groovy, call: str) -> str:
    return _startup_check(groovy, ["checkUniqueSampleIds", "sampleIdFromPath"] + SAMPLE_NAME_FUNCTIONS, call)


@pytest.mark.parametrize("name", ["a.fsa", "a.FSA.gz", "a.fsa.bz2", "a.fsa.xz", "a.fna", "a.fastq.gz"])
def test_ncbi_fasta_extensions_are_left_out_of_sample_names(groovy, name):
    assert _inputs_check(groovy, f"assert sampleIdFromPath(file('/d/{name}')) == 'a'") == "passed"


def test_files_giving_one_sample_name_are_listed_with_it(groovy):
    """`a.fa` and `a.fa.gz` in one glob were refused saying only the name."""
    rows = "[[[id: 'a'], [file('/d/a.fa')]], [[id: 'a'], [file('/d/a.fa.gz')]], [[id: 'b'], [file('/d/b.fa')]]]"
    message = _inputs_check(groovy, f"checkUniqueSampleIds({rows})")
    assert "give the sample name 'a' (/d/a.fa, /d/a.fa.gz); rename them" in message, message
    assert "/d/b.fa" not in message


SCHEMA_UTILS = REPO / "subworkflows" / "local" / "utils_schema" / "main.nf"


def _schema_functions(*names: str) -> str:
    """The Groovy source of the named top-level functions of the schema subworkflow."""
    return _utils_functions(*names, source=SCHEMA_UTILS)


def _not_files(groovy, pattern: str) -> str:
    """The problems of the names `pattern` gives that are no files to read, one a line, or 'passed'."""
    code = "\n".join([NEXTFLOW_STAND_INS,
                      _schema_functions("unreadableMatches", "isGlobPattern", "shownMatch", "notFileProblems",
                                        "entryKind", "notFileFix", "unnamablePath"),
                      "def literal = file(pattern)",
                      "outcome { def p = notFileProblems(pattern, literal.exists() ? [literal] : unreadableMatches(pattern));"
                      " if (p) { error(p.join('\\n')) } }"])
    return groovy.evaluate({"pattern": pattern}, [("outcome", code, False)])["outcome"]


def test_glob_matches_that_are_no_files_are_named(groovy, tmp_path):
    """`--input 'links/*.fa'` dropped a link to nothing without a word (the run ended well, that
    sample missing); a folder or a pipe named like the files is listed the same way."""
    links = tmp_path / "links"
    (links / "sub").mkdir(parents=True)
    (links / "a.fa").write_text(">r\nACGT\n")
    (links / "good.fa").symlink_to(links / "a.fa")
    (links / "gone.fa").symlink_to(tmp_path / "moved.fa")
    (links / "dir.fa").mkdir()
    os.mkfifo(links / "pipe.fa")
    (links / ".hidden.fa").symlink_to(tmp_path / "nothing.fa")
    (links / "sub" / "deep.fa").symlink_to(tmp_path / "nothing.fa")
    lines = _not_files(groovy, str(links / "*.fa")).splitlines()
    assert lines == [
        f"'{links / 'dir.fa'}' (matched by '{links / '*.fa'}') is a directory, not a file: move it away or narrow the pattern",
        f"'{links / 'gone.fa'}' (matched by '{links / '*.fa'}') is a link to {tmp_path / 'moved.fa'}, which does not exist:"
        " mend or remove the link, or narrow the pattern",
        f"'{links / 'pipe.fa'}' (matched by '{links / '*.fa'}') is neither a file nor a directory (a pipe, socket or device):"
        " move it away or narrow the pattern"], lines
    assert f"{links / 'sub' / 'deep.fa'}" in _not_files(groovy, str(links / "**.fa"))
    assert ".hidden.fa" in _not_files(groovy, str(links / ".*.fa"))
    assert _not_files(groovy, str(links / "{a,good}.fa")) == "passed"


def test_a_folder_or_a_link_to_nothing_given_as_input_is_named(groovy, tmp_path):
    """`--input /data/g4/` passed start-up; PREPARE then failed on it (exit 3, `input is a directory`)."""
    (tmp_path / "g4").mkdir()
    (tmp_path / "gone.fa").symlink_to(tmp_path / "moved.fa")
    assert _not_files(groovy, f"{tmp_path / 'g4'}/") == (
        f"'{tmp_path / 'g4'}/' is a directory, not a file: give its files as a quoted glob, such as '{tmp_path / 'g4'}/*.fa'")
    assert _not_files(groovy, str(tmp_path / "gone.fa")).startswith(f"'{tmp_path / 'gone.fa'}' is a link to")


CHECKPOINT_DIR_FUNCTIONS = ("checkpointDir", "refuseUnwritableCheckpointDir", "unwritableFolderProblem",
                            "createdFolderFailure", "nearestExisting", "danglingLink", "batchExecutor")


@pytest.mark.parametrize("engine, refused", [("docker", True), ("apptainer", True), ("singularity", True), (None, False)])
def test_a_checkpoint_folder_a_container_cannot_mount_is_refused(groovy, tmp_path, engine, refused):
    """`docker --volume SRC:DST` and `apptainer --bind SRC[:DST],...` read ':' and ',' in a path as
    their own syntax: such a --checkpoint_dir is refused when a container engine is on."""
    for name in ("ck:pt", "ck,pt"):
        requested = str(tmp_path / name)
        comma_under_docker = engine == "docker" and name == "ck,pt"  # `--volume` splits on ':' only
        code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions(*CHECKPOINT_DIR_FUNCTIONS),
                          "workflow = [workDir: file('/work-of-no-run'), containerEngine: engine]",
                          "outcome { checkpointDir(requested, workflow.workDir) }"])
        message = groovy.evaluate({"engine": engine, "requested": requested}, [("outcome", code, False)])["outcome"]
        if refused and not comma_under_docker:
            assert message.startswith(f"--checkpoint_dir {requested}: "), message
            assert f"'{name[2]}'" in message and engine in message and "another --checkpoint_dir" in message, message
            assert not (tmp_path / name).exists(), "made before it was refused"
        else:
            assert message == "passed" and (tmp_path / name).is_dir()


def _checkpoint_dir(groovy, requested, preview: bool = False) -> str:
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions(*CHECKPOINT_DIR_FUNCTIONS),
                      f"workflow = [workDir: file('/work-of-no-run'), preview: {str(preview).lower()}]",
                      "outcome { checkpointDir(requested, workflow.workDir) }"])
    return groovy.evaluate({"requested": requested}, [("outcome", code, False)])["outcome"]


@pytest.mark.parametrize("preview", [False, True])
def test_a_checkpoint_folder_that_cannot_be_made_is_refused_at_start_up_naming_it_and_why(groovy, tmp_path, preview):
    """mkdirs' failure was ignored: EMBED found it, exit 10 after PREPARE, its hint not naming
    --checkpoint_dir. (Folders this user may not write: tests/pipeline/test_engine.py, without root's
    permission bypass.) A -preview makes nothing, and finds it all the same."""
    (tmp_path / "a file").write_text("")
    requested = str(tmp_path / "a file" / "ck")
    assert _checkpoint_dir(groovy, requested, preview) == \
        f"--checkpoint_dir {requested} cannot be created: {tmp_path / 'a file'} is not a folder: EMBED keeps its " \
        "checkpoints there; give a --checkpoint_dir you can write into, or make this one writable for you"
    assert _checkpoint_dir(groovy, str(tmp_path / "a file"), preview).startswith(
        f"--checkpoint_dir {tmp_path / 'a file'} is not usable: {tmp_path / 'a file'} is not a folder")
    assert _checkpoint_dir(groovy, str(tmp_path / "new" / "ck"), preview) == "passed"
    assert (tmp_path / "new" / "ck").is_dir() != preview


def test_an_outdir_behind_a_link_to_nothing_is_refused_naming_the_link(groovy, tmp_path):
    """--outdir results, a link to a scratch folder not made yet: Nextflow stopped on its reports'
    folder with a bare "File or directory already exists: results"."""
    (tmp_path / "results").symlink_to(tmp_path / "scratch" / "results")
    functions = ["refuseUnwritableOutdir", "unwritableFolderProblem", "createdFolderFailure", "nearestExisting",
                 "danglingLink", "linkTarget"]
    for outdir in (tmp_path / "results", tmp_path / "results" / "run1"):
        message = _startup_check(groovy, functions,
                                 f"refuseUnwritableOutdir('{outdir}', file('{outdir}/pipeline_info'), true)")
        assert message.startswith(f"--outdir {outdir} cannot be created: {tmp_path / 'results'} is a link to "
                                  f"{tmp_path / 'scratch' / 'results'}, which does not exist (make that folder"), message
        assert _reports_config(groovy, outdir) == "conf/refused_outdir.config"
    (tmp_path / "chained").symlink_to("results")  # a link to the link: the folder to make is the last target
    message = _startup_check(groovy, functions, f"refuseUnwritableOutdir('{tmp_path / 'chained'}', "
                                                f"file('{tmp_path / 'chained' / 'pipeline_info'}'), true)")
    assert f"{tmp_path / 'chained'} is a link to {tmp_path / 'scratch' / 'results'}, which does not exist" in message
    (tmp_path / "scratch" / "results").mkdir(parents=True)
    assert _startup_check(groovy, functions, f"refuseUnwritableOutdir('{tmp_path / 'results'}', "
                                             f"file('{tmp_path / 'results' / 'pipeline_info'}'), true)") == "passed"
    assert _reports_config(groovy, tmp_path / "results") == "/dev/null"


SCHEMA_UTILS = REPO / "subworkflows" / "local" / "utils_schema" / "main.nf"


def test_a_path_java_cannot_name_is_said_in_the_locale_s_own_encoding(groovy):
    """Under fr_FR.ISO-8859-1 the message said "(the locale is C, POSIX or unset)"."""
    text = SCHEMA_UTILS.read_text()
    start = text.index("def unnamablePathCause(")
    function = text[start:matching(mask(text), text.index("{", start)) + 1]
    code = (function + "\ndef was = System.getProperty('sun.jnu.encoding'); System.setProperty('sun.jnu.encoding', "
            "'ISO-8859-1'); def said = unnamablePathCause(); System.setProperty('sun.jnu.encoding', was); said")
    said = groovy.evaluate({}, [("said", code, False)])["said"]
    assert "it encodes them as ISO-8859-1" in said and "not UTF-8" in said, said
    assert "locale is C" not in said and "POSIX" not in said, said


def _reports_config(groovy, outdir, **params) -> str:
    """What nextflow.config's includeConfig closure includes for this --outdir: the refused run's
    report settings (conf/refused_outdir.config), none (conf/no_reports.config) or nothing (/dev/null)."""
    text = (REPO / "nextflow.config").read_text()
    start = text.index("{", text.index("includeConfig ({"))
    closure = text[start:matching(mask(text), start) + 1]
    return groovy.evaluate({"params": {"outdir": str(outdir), **params}}, [("config", closure, True)])["config"]


@pytest.mark.parametrize("suffix", ["../../x", "a/b", "x y", ""])
def test_a_report_suffix_the_checks_refuse_writes_no_report(groovy, tmp_path, suffix):
    """The suffix names the report files, which Nextflow opens before the checks: '../../x' wrote a
    report outside --outdir, 'a/b' one in a new folder, before the run was refused."""
    assert _reports_config(groovy, tmp_path / "results", trace_report_suffix=suffix) == "conf/no_reports.config"
    assert _reports_config(groovy, tmp_path / "results", trace_report_suffix="2026-12-04_21-00-00") == "/dev/null"


def test_reports_of_a_run_refused_for_an_outdir_in_use_stay_out_of_it_and_a_resume_s_go_there(groovy, tmp_path):
    """Only a lock held by a running run sends the reports to .nextflow/: a finished run leaves its
    lock file behind, unheld, and a -resume of it writes its reports in its --outdir as ever."""
    import fcntl
    outdir = tmp_path / "results"
    assert _reports_config(groovy, outdir) == "/dev/null"
    (outdir / "pipeline_info").mkdir(parents=True)
    with open(outdir / "pipeline_info" / ".virnucpro-run.lock", "w") as lock:
        assert _reports_config(groovy, outdir) == "/dev/null"
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running pipeline holds (a POSIX lock)
        assert _reports_config(groovy, outdir) == "conf/refused_outdir.config"
        fcntl.lockf(lock, fcntl.LOCK_UN)
        assert _reports_config(groovy, outdir) == "/dev/null"
    (tmp_path / "a file").write_text("")
    assert _reports_config(groovy, tmp_path / "a file" / "results") == "conf/refused_outdir.config"


NO_LOCKS = """
cls = Class.forName('sun.nio.ch.FileChannelImpl')
cls.metaClass.tryLock = { long position, long size, boolean shared -> throw new IOException('Function not implemented') }
'locks refused'
"""


def test_a_resume_on_a_file_system_without_locks_writes_its_reports_in_its_outdir(groovy, tmp_path):
    """An HPC review's case (Lustre mounted noflock): the run lock could not be tried, the config took
    it for held and sent every -resume's reports to .nextflow/, while the run went on unlocked."""
    outdir = tmp_path / "results"
    (outdir / "pipeline_info").mkdir(parents=True)
    (outdir / "pipeline_info" / ".virnucpro-run.lock").write_text("")
    text = (REPO / "nextflow.config").read_text()
    start = text.index("{", text.index("includeConfig ({"))
    closure = text[start:matching(mask(text), start) + 1]
    try:
        found = groovy.evaluate({"params": {"outdir": str(outdir)}, "lockPath": str(outdir / "pipeline_info" / ".virnucpro-run.lock")}, [
            ("setup", NO_LOCKS, False), ("config", closure, True),
            ("lock", "java.nio.channels.FileChannel.open(java.nio.file.Paths.get(lockPath)).withCloseable { c -> "
                     "try { c.tryLock(0L, 1L, true); 'locked' } catch (IOException e) { e.message } }", False)])
    finally:
        groovy.evaluate({}, [("teardown", "GroovySystem.metaClassRegistry.removeMetaClass("
                                          "Class.forName('sun.nio.ch.FileChannelImpl')); 'restored'", False)])
    assert found["lock"] == "Function not implemented", found  # the stand-in took effect
    assert found["config"] == "/dev/null", found


def test_a_run_whose_reports_went_to_dot_nextflow_though_its_outdir_was_accepted_says_where_they_are(groovy, tmp_path):
    """A review's case: -w results/work, results/work made by a run refused at validation: the config
    took results for a foreign folder (reports to .nextflow/), the start-up checks accepted it, and the
    run's report, timeline, trace and DAG were missing from results/pipeline_info/, unsaid."""
    def warnings():
        code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions("warnIfReportsElsewhere"),
                          "warned = []", "log = [warn: { String message -> warned << message }]",
                          f"workflow = [preview: false, launchDir: file('{tmp_path}')]",
                          f"warnIfReportsElsewhere('{tmp_path / 'results'}', '2026-01-01_00-00-00')",
                          "outcome { error(warned.join(' / ')) }"])
        return groovy.evaluate({}, [("outcome", code, False)])["outcome"]
    assert warnings() == ""
    reports = tmp_path / ".nextflow" / "pipeline_info"
    reports.mkdir(parents=True)
    (reports / "execution_trace_2026-01-01_00-00-01.txt").write_text("")  # another run's
    assert warnings() == ""
    (reports / "execution_trace_2026-01-01_00-00-00.txt").write_text("")
    said = warnings()
    assert said.startswith(f"--outdir {tmp_path / 'results'}: this run's execution report, timeline, trace and DAG "
                           f"are in {reports}"), said
    assert "-w" in said
    # a refused run's reports with a fixed --trace_report_suffix, and this run's in its --outdir: no warning
    (tmp_path / "results" / "pipeline_info").mkdir(parents=True)
    (tmp_path / "results" / "pipeline_info" / "execution_trace_2026-01-01_00-00-00.txt").write_text("")
    assert warnings() == ""


@pytest.mark.parametrize("outdir", ["out$x", "res[1]", "out\tput", "work/res", "work"])
def test_reports_of_a_run_refused_for_its_outdir_s_name_or_place_stay_out_of_it(groovy, outdir):
    """A review's case: refused by checkParameterPaths ('$') or as inside the work directory, the run had
    already written its trace into that --outdir: the config's check had drifted from the start-up's."""
    launch = groovy.evaluate({}, [("cwd", "java.nio.file.Paths.get('').toAbsolutePath().toString()", False)])["cwd"]
    assert _reports_config(groovy, Path(launch) / outdir) == "conf/refused_outdir.config"
    assert _reports_config(groovy, Path(launch) / "results") == "/dev/null"


def test_the_config_judges_the_characters_of_the_outdir_s_absolute_path_as_the_start_up_does(groovy, tmp_path):
    """A review's case: `--outdir results` launched in a folder p{1}: the start-up checks the whole
    absolute path, the config checked the text given, and the refused run wrote its trace into
    results/. The config now checks the absolute, normalised path (a relative one is taken from the
    launch folder): p{1}/../results has no '{' left in it, as the start-up sees it."""
    assert _reports_config(groovy, tmp_path / "p{1}" / "results") == "conf/refused_outdir.config"
    assert _reports_config(groovy, str(tmp_path) + "/p{1}/../results") == "/dev/null"


def test_the_inputs_table_stays_one_line_of_three_fields_per_file(groovy):
    """pipeline_info/inputs_<start>.tsv: a tab or line break in a path would break its rows."""
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions("inputsTableLine"),
                      "outcome = inputsTableLine('s1', 1, file(path))"])
    line = groovy.evaluate({"path": "/d/a\tb\nc\\d.fa"}, [("outcome", code, False)])["outcome"]
    assert line == "s1\tinput/2/a\\tb\\nc\\d.fa\t/d/a\\tb\\nc\\d.fa", line
    plain = groovy.evaluate({"path": "/d/my reads.fa"}, [("outcome", code, False)])["outcome"]
    assert plain == "s1\tinput/2/my reads.fa\t/d/my reads.fa"


# --------------------------------------------------------------------------------------------------
# The configuration Nextflow itself resolves for a profile (`nextflow config -flat`)
# --------------------------------------------------------------------------------------------------

NEXTFLOW = REPO / "scripts" / "nextflow" / "nextflow"


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    """`nextflow config -flat -profile P` of the pipeline as {setting: value}, one call per profile."""
    problem = java_problem()
    if not problem and not shutil.which("mvn") and not any(Path.home().glob(".cache/virnucpro-nextflow/*/complete")):
        problem = "no mvn on PATH to resolve Nextflow from Maven Central"
    if problem:
        skip_unless_ci(problem)
    launch = tmp_path_factory.mktemp("nextflow-config")
    env = quick_jvm({**os.environ, "NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true"})
    cache = {}

    def config(profiles: str, java_options: str = "") -> dict:
        if (profiles, java_options) not in cache:
            done = subprocess.run([str(NEXTFLOW), "config", str(REPO), "-flat", "-profile", profiles], cwd=launch,
                                  env=dict(env, JAVA_TOOL_OPTIONS=java_options) if java_options else env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            cache[profiles, java_options] = dict(line.split(" = ", 1) for line in done.stdout.splitlines()
                                                 if " = " in line)
        return cache[profiles, java_options]
    return config


@pytest.mark.parametrize("profile, executor", [("awsbatch", "'awsbatch'"), ("google", "'google-batch'")])
def test_cloud_profiles_download_the_models_on_the_batch_executor(resolved, profile, executor):
    """The local executor refuses an s3:// or gs:// work directory ("Local executor requires the use
    of POSIX compatible file system"): there the download runs as a batch job like every other task,
    and keeps the storeDir and arguments of conf/modules.config."""
    settings = resolved(profile)
    assert settings["process.executor"] == executor
    assert settings["process.'withName:VIRNUCPRO_MODELS_DOWNLOAD'.executor"] == executor
    assert "params.models_store" in settings["process.'withName:VIRNUCPRO_MODELS_DOWNLOAD'.storeDir"]
    assert "process.'withName:VIRNUCPRO_MODELS_DOWNLOAD'.ext.args" in settings


def test_the_default_report_suffix_passes_its_own_schema_pattern_in_any_jvm_locale(resolved):
    """The reports' default suffix is the start time, formatted in a JVM whose locale LANG sets: with
    Thai digits or the Buddhist year (th_TH_TH), or Arabic-Indic digits (ar_EG, fa_IR), it would fail
    the schema's ASCII pattern and refuse every run. Nextflow's Date.format writes English whatever
    the locale; this keeps the default (and whatever formats it) so."""
    import json
    from datetime import datetime, timezone
    settings = resolved("test", java_options="-Duser.language=th -Duser.country=TH -Duser.variant=TH")
    suffix = settings["params.trace_report_suffix"].strip("'")
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    pattern = schema["$defs"]["generic_options"]["properties"]["trace_report_suffix"]["pattern"]
    assert re.fullmatch(pattern.rstrip("$"), suffix), suffix
    assert abs(int(suffix[:4]) - datetime.now(timezone.utc).year) <= 1, suffix


def test_gpu_profile_wins_over_test_in_any_order(resolved):
    """Nextflow 24.10 applies profiles in the order nextflow.config declares them, not the order of
    -profile: `gpu,test` must run the tiny test on the GPU, as `test,gpu` does."""
    settings = resolved("gpu,test")
    assert settings["params.device"] == "'cuda'"
    assert settings["params.tiny_models"] == "true"


def test_test_full_asks_no_more_than_the_machine_has(resolved):
    """`-profile test_full,docker` on a workstation: the local executor refuses a task that asks for
    more CPUs or memory than the machine has, and EMBED asks for 8 CPUs and 48 GB."""
    limits = resolved("test_full")["process.resourceLimits"]
    found = host_limits(limits)
    assert found, f"test_full does not cap the requests at this machine: {limits}"
    cpus, memory = found
    assert 1 <= cpus <= os.cpu_count(), limits
    assert 0 < memory <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), limits
    assert "time:" in limits


def host_limits(limits: str) -> tuple[int, int] | None:
    """(cpus, memory in bytes) of a resourceLimits setting written as this machine's size."""
    found = re.search(r"cpus:(\d+), memory:'(\d+) B'", limits)
    return (int(found.group(1)), int(found.group(2))) if found else None


@pytest.mark.parametrize("profile", ["docker", "apptainer,gpu", "gpu"])
def test_a_local_run_asks_no_more_than_the_machine_has(resolved, profile):
    """Without an executor profile the tasks run on the machine that runs Nextflow, whose local
    executor refuses a task asking for more than it has ("Process requirement exceeds available
    CPUs -- req: 4; avail: 2"): the defaults (PREPARE 4 CPUs, EMBED 8 CPUs and 48 GB) are capped."""
    limits = resolved(profile)["process.resourceLimits"]
    found = host_limits(limits)
    assert found, f"a local run is not capped at this machine: {limits}"
    assert 1 <= found[0] <= os.cpu_count() and 0 < found[1] <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.parametrize("profile", ["slurm", "slurm,apptainer,gpu", "awsbatch", "google"])
def test_an_executor_profile_asks_for_what_its_nodes_have(resolved, profile):
    """Under an executor profile the tasks run on other machines: the launching host's size (often a
    small login node) must not cap them."""
    limits = resolved(profile)["process.resourceLimits"]
    assert host_limits(limits) is None and "cpus:64" in limits and "512" in limits, limits


@pytest.mark.parametrize("profile, device, gres", [
    ("slurm,apptainer,gpu", "cuda", "--gres=gpu:1"),
    ("test,slurm,gpu", "cpu", None),  # --device cpu given on the command line wins: no GPU held idle
    ("slurm,gpu", "auto", "--gres=gpu:1"),
    ("slurm,apptainer", "cuda", "--gres=gpu:1"),  # --device cuda with no GPU would fail every task (exit 8)
    ("slurm,apptainer", "auto", None),
])
def test_slurm_asks_for_a_gpu_when_the_container_gets_one(groovy, profile, device, gres):
    """EMBED's job asks SLURM for a GPU exactly when its container is given GPUs (conf/modules.config)."""
    slurm = (REPO / "conf" / "slurm.config").read_text()
    closure = re.search(r"clusterOptions = (\{.*?\n    \})", slurm, re.S).group(1)
    bindings = {"params": {**PARAMS, "device": device}, "task": {"label": ["process_gpu"]},
                "workflow": {"profile": profile}, "meta": {"id": "s1"}}
    options = groovy.evaluate(bindings, [("options", closure, True)])["options"] or ""
    assert ("--gres=gpu:1" in options.split()) == bool(gres), options
    gpus = _embed_closure(groovy, "containerOptions", engine="apptainer", device=device, profile=profile)
    assert ("--nv" in gpus.split()) == bool(gres), gpus
    typed = groovy.evaluate({**bindings, "params": {**bindings["params"], "gpu_type": "a100"}},
                            [("options", closure, True)])["options"] or ""
    assert ("--gres=gpu:a100:1" in typed.split()) == bool(gres), typed
    # the cloud executors' request follows the same rule (conf/base.config: not only under the gpu profile)
    asked = groovy.evaluate(bindings, [("accelerator", assignments(BASE_CONFIG)["accelerator"], True)])["accelerator"]
    assert (asked == 1) == bool(gres), asked


def _foreign_check(groovy, outdir, *own, reports: str = "") -> str:
    folders = ", ".join(f"'{folder}'" for folder in own)
    return _startup_check(groovy, ["refuseForeignOutdir", "resultEntries", "thisRunsReports", "holdsOnlyReports",
                                   "quoted", "canonicalPath"],
                          f"refuseForeignOutdir(file('{outdir}'), [{folders}])", reports=reports)


def _publishing(groovy, process_config: str, mode: str, prepared: bool = False, embeddings: bool = False) -> str:
    return _startup_check(groovy, ["refusePublishingUnlikeParams", "publishingProblems", "pipelinePublishing",
                                   "publishDirSettings"],
                          f"refusePublishingUnlikeParams({process_config}, '{mode}', [VIRNUCPRO_PREPARE: "
                          f"{str(prepared).lower()}, VIRNUCPRO_EMBED: {str(embeddings).lower()}])")


PIPELINE_PUBLISHING = ("'withName:VIRNUCPRO_PREPARE': [publishDir: [mode: '{copied}', enabled: {prepared}]], "
                       "'withName:VIRNUCPRO_EMBED': [publishDir: [mode: '{copied}', enabled: false]], "
                       "'withName:VIRNUCPRO_PREDICT': [publishDir: [mode: '{mode}']], "
                       "'withName:VIRNUCPRO_VERSIONS': [publishDir: [mode: '{copied}']], "
                       "'withName:MULTIQC': [publishDir: [mode: '{mode}']]")


def _as_configured(mode: str, prepared: bool = False, extra: str = "") -> str:
    copied = "copy" if mode == "move" else mode
    return "[" + PIPELINE_PUBLISHING.format(mode=mode, copied=copied, prepared=str(prepared).lower()) + extra + "]"


@pytest.mark.parametrize("mode", ["copy", "move", "symlink", "link"])
def test_publishing_as_the_parameters_say_passes(groovy, mode):
    assert _publishing(groovy, _as_configured(mode, prepared=True), mode, prepared=True) == "passed"
    extra = ", 'withLabel:process_gpu': [cpus: 8, 'withName:VIRNUCPRO_EMBED': [memory: '8 GB']]"  # resources only
    assert _publishing(groovy, _as_configured(mode, extra=extra), mode) == "passed"


def test_publishing_unlike_the_parameters_or_of_a_config_files_own_is_named(groovy):
    """A review's cases: a -c file's params read after conf/modules.config ('move' there left every
    mode 'copy'), and publishDir set under a process's full name, a pattern, a label or nested
    selectors (Nextflow applies them over the pipeline's), which turned publishing off unseen."""
    message = _publishing(groovy, _as_configured("copy"), "move")
    assert "withName:VIRNUCPRO_PREDICT publishes in mode 'copy', --publish_dir_mode 'move' gives 'move'" in message
    assert "VIRNUCPRO_PREPARE publishes in mode" not in message, message  # copied under move, as configured
    message = _publishing(groovy, _as_configured("copy"), "copy", prepared=True)
    assert "withName:VIRNUCPRO_PREPARE does not publish its files, --save_prepared is true" in message
    for selector in ("'withName:VIRNUCPRO:VIRNUCPRO_EMBED': [publishDir: [mode: 'copy']]",
                     "'withName:VIRNUCPRO_PREPARE|VIRNUCPRO_EMBED': [publishDir: [mode: 'copy', enabled: false]]",
                     "'withLabel:process_gpu': ['withName:VIRNUCPRO_EMBED': [publishDir: [[mode: 'copy']]]]",
                     "publishDir: [mode: 'copy']"):
        message = _publishing(groovy, _as_configured("copy", extra=", " + selector), "copy")
        assert "sets a publishDir of its own" in message and "leave publishDir out of -c files" in message, message

def test_what_holds_only_this_runs_reports_is_not_a_strangers(groovy, tmp_path):
    """-with-trace <outdir>/trace.txt: Nextflow opens it for this run before the start-up checks, which
    refused the new --outdir for it. Only files the configuration names as this run's are skipped."""
    outdir = tmp_path / "results"
    (outdir / "reports").mkdir(parents=True)
    for name in ("trace.txt", "reports/report.html", "reports/timeline.html"):
        (outdir / name).write_text("")
    reports = (f"[trace: [enabled: true, file: '{outdir / 'trace.txt'}'], report: [enabled: true, file: "
               f"'{outdir / 'reports/report.html'}'], timeline: [enabled: false, file: '{outdir / 'reports/timeline.html'}']]")
    assert "already holds 'reports'" in _foreign_check(groovy, outdir, reports=reports)  # a disabled one is no report
    (outdir / "reports" / "timeline.html").unlink()
    assert _foreign_check(groovy, outdir, reports=reports) == "passed"
    (outdir / "reports" / "empty").mkdir()  # a folder of nothing is no report of this run's
    assert "already holds 'reports'" in _foreign_check(groovy, outdir, reports=reports)
    (outdir / "reports" / "empty").rmdir()
    (outdir / "trace.html").write_text("")
    assert "already holds 'trace.html'" in _foreign_check(groovy, outdir, reports=reports)


def test_an_outdir_holding_files_no_run_of_the_pipeline_wrote_is_refused(groovy, tmp_path):
    """A reviewer's case: --outdir results/ shared with another pipeline; publishing replaced its
    multiqc/multiqc_report.html and a sample's report.html without a word."""
    outdir = tmp_path / "results"
    (outdir / "multiqc").mkdir(parents=True)
    (outdir / "multiqc" / "multiqc_report.html").write_text("another pipeline's report\n")
    message = _foreign_check(groovy, outdir)
    assert f"--outdir {outdir} already holds 'multiqc'" in message and "no run of this pipeline wrote it" in message
    assert "give a new or empty --outdir" in message


def test_a_new_empty_or_earlier_runs_outdir_is_used(groovy, tmp_path):
    outdir = tmp_path / "results"
    assert _foreign_check(groovy, outdir) == "passed"  # not there yet
    (outdir / "pipeline_info").mkdir(parents=True)
    (outdir / "pipeline_info" / "execution_trace_2026-01-01_00-00-00.txt").write_text("")  # this run's own, opened first
    assert _foreign_check(groovy, outdir) == "passed"
    (outdir / ".DS_Store").write_text("")  # no result of the run is hidden, nor named lost+found
    (outdir / "lost+found").mkdir()
    assert _foreign_check(groovy, outdir) == "passed"
    (outdir / "work" / "ab").mkdir(parents=True)  # a review's case: this run's own work and checkpoint folders
    (outdir / "ckpt").mkdir()
    assert _foreign_check(groovy, outdir, outdir / "work", outdir / "ckpt") == "passed"
    assert "already holds 'ckpt', 'work'" in _foreign_check(groovy, outdir)
    (outdir / "sample_a").mkdir()
    (outdir / "pipeline_info" / ".virnucpro-run.lock").write_text("")  # an earlier run of the pipeline wrote it
    assert _foreign_check(groovy, outdir) == "passed"


MARK_RUN = """
java.nio.file.Path.metaClass.setText = { String text -> java.nio.file.Files.writeString(delegate, text) }  // follows links, as Nextflow's
java.nio.file.Path.metaClass.getText = { -> java.nio.file.Files.readString(delegate) }
warned = []
handlers = []
log = [warn: { String message -> warned << message }]
workflow = [preview: false, runName: 'a_run', sessionId: 'a-session', start: 'now', success: true,
            stats: [ignoredCount: IGNORED], onComplete: { Closure handler -> handlers << handler }]
markUnfinished('OUTDIR')
def written = file('OUTDIR').resolve('RUN_UNFINISHED.txt')
def during = java.nio.file.Files.isRegularFile(written, java.nio.file.LinkOption.NOFOLLOW_LINKS) ? written.text.readLines()[0] : 'none'
handlers.each { handler -> handler() }
outcome { error(during + ' | ' + java.nio.file.Files.exists(written, java.nio.file.LinkOption.NOFOLLOW_LINKS) + ' | ' + warned.size()) }
"""


def _mark_run(groovy, outdir, ignored: int = 0) -> str:
    """'first line of RUN_UNFINISHED.txt while the run goes | whether it is there after | warnings'."""
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions("markUnfinished", "unfinishedMarkTitle", "isUnfinishedMark", "unfinishedMarkName"),
                      MARK_RUN.replace("OUTDIR", str(outdir)).replace("IGNORED", str(ignored))])
    return groovy.evaluate({}, [("outcome", code, False)])["outcome"]


def test_the_unfinished_mark_is_there_until_a_run_completes_with_every_task(groovy, tmp_path):
    """A review's case: a run whose failed tasks were ignored (errorStrategy 'ignore') counts as a
    success for Nextflow; it removed the mark while its results were mixed with an earlier run's."""
    tmp_path.joinpath("out").mkdir()
    assert _mark_run(groovy, tmp_path / "out") == "virnucpro pipeline: run not completed | false | 0"
    assert _mark_run(groovy, tmp_path / "out", ignored=1) == "virnucpro pipeline: run not completed | true | 0"
    assert _mark_run(groovy, tmp_path / "out") == "virnucpro pipeline: run not completed | false | 0"  # the next one completes


@pytest.mark.parametrize("kind", ["link", "file of the user's"])
def test_a_run_unfinished_file_not_ours_is_neither_written_through_nor_removed(groovy, tmp_path, kind):
    """A review's case: a link named RUN_UNFINISHED.txt had the mark written into the file it points
    to (outside --outdir), then the link removed; a user's own file was replaced, then removed."""
    (tmp_path / "out").mkdir()
    victim = tmp_path / "notes.txt"
    victim.write_text("my notes\n")
    if kind == "link":
        (tmp_path / "out" / "RUN_UNFINISHED.txt").symlink_to(victim)
    else:
        (tmp_path / "out" / "RUN_UNFINISHED.txt").write_text("my notes\n")
    assert _mark_run(groovy, tmp_path / "out").endswith("| true | 1")  # kept, and a warning
    assert victim.read_text() == "my notes\n"
    assert (tmp_path / "out" / "RUN_UNFINISHED.txt").read_text() == "my notes\n"


def _stale_check(groovy, outdir, ids, **publishes) -> str:
    given = ", ".join(f"{kind}: {str(publishes.get(kind, False)).lower()}" for kind in ("multiqc", "prepared", "embeddings"))
    return _startup_check(groovy, ["refuseStaleOutputs"], f"refuseStaleOutputs('{outdir}', {ids!r}, [{given}])")


def test_an_earlier_runs_output_this_run_would_not_replace_is_refused(groovy, tmp_path):
    """A reviewer's case: a rerun with --skip_multiqc left the earlier run's MultiQC report (other
    counts) beside the new tables; so would prepared/ or embeddings/ once not saved any more."""
    outdir = tmp_path / "results"
    (outdir / "multiqc").mkdir(parents=True)
    (outdir / "sample_a" / "embeddings").mkdir(parents=True)
    (outdir / "gone_sample" / "prepared").mkdir(parents=True)  # a sample no longer in the run: left alone, as documented
    message = _stale_check(groovy, outdir, ["sample_a"], prepared=True)
    assert f"{outdir / 'multiqc'}, {outdir / 'sample_a' / 'embeddings'}: an earlier run published these" in message
    assert "--skip_multiqc, no --save_embeddings" in message and "gone_sample" not in message
    assert f"rm -r '{outdir / 'multiqc'}' '{outdir / 'sample_a' / 'embeddings'}'" in message
    assert _stale_check(groovy, outdir, ["sample_a"], multiqc=True, embeddings=True) == "passed"


def test_the_embed_settings_of_a_session_are_read_in_every_record_format(groovy):
    """Earlier versions recorded the checkpoint folder alone, then one set as a name and value per
    line; now one JSON object per set, a line each (a line cut short is skipped, not fatal)."""
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions("recordedEmbedSettings"),
                      "oldest = recordedEmbedSettings('/ck/dir\\n')",
                      "old = recordedEmbedSettings('checkpoint_dir\\t/ck\\ntoken_budget\\t\\ncompile\\tfalse\\n')",
                      "now = recordedEmbedSettings('{\"checkpoint_dir\":\"/a\",\"compile\":false}\\n{\"checkpoint_dir\":\"/b\"}\\n{\"chec')",
                      "outcome { error([oldest, old, now].join(' | ')) }"])
    found = groovy.evaluate({}, [("outcome", code, False)])["outcome"]
    assert found == ("[[checkpoint_dir:/ck/dir]] | [[checkpoint_dir:/ck, token_budget:, compile:false]] | "
                     "[[checkpoint_dir:/a, compile:false], [checkpoint_dir:/b]]"), found


def test_the_models_store_folder_given_as_models_points_to_the_download_inside(groovy, tmp_path):
    """A docs reviewer's case: --models virnucpro-models (the --models_store) instead of the folder the
    download is kept in; the refusal suggested `models check` and `models download`, neither of which helps."""
    store = tmp_path / "virnucpro-models"
    (store / "virnucpro_models").mkdir(parents=True)
    (store / "virnucpro_models" / "manifest.json").write_text('{"models": {"classifier_500": {}}}')
    message = _models_check(groovy, store, 500)
    assert f"give the folder the download is kept in, --models {store / 'virnucpro_models'}" in message, message
    assert _models_check(groovy, store / "virnucpro_models", 500) == "passed"
    (tmp_path / "empty" / "virnucpro_models").mkdir(parents=True)  # an empty inner folder: the usual refusal
    assert "is not a models directory" in _models_check(groovy, tmp_path / "empty", 500)


EMBED_KEY_RUN = """
java.nio.file.Path.metaClass.getText = { -> java.nio.file.Files.readString(delegate) }
warned = []
log = [warn: { String message -> warned << message }, debug: { String message -> }]
workflow = [preview: false, resume: RESUME, sessionId: 'a-session', workDir: file('WORK')]
def record = embedSettingsRecord()
warnIfEmbedKeyChanged(record, [checkpoint_dir: '/ck', token_budget: BUDGET, compile: true])
if (EMBEDDED) { recordEmbedSettings(record, [checkpoint_dir: '/ck', token_budget: BUDGET, compile: true]) }
outcome { error(warned.join(' / ')) }
"""


def _embed_key_run(groovy, work, budget, embedded: bool, resume: bool = True) -> str:
    """The warnings of a run (a -resume) giving `budget`, which embeds a shard or stops before."""
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions("warnIfEmbedKeyChanged", "embedSettingsRecord",
                                                           "embedSettingsText", "keyedAlike", "recordEmbedSettings",
                                                           "recordedEmbedSettings"),
                      EMBED_KEY_RUN.replace("WORK", str(work)).replace("BUDGET", str(budget))
                      .replace("EMBEDDED", str(embedded).lower()).replace("RESUME", str(resume).lower())])
    return groovy.evaluate({}, [("outcome", code, False)])["outcome"]


def test_every_set_of_embed_settings_that_keyed_shards_is_recorded_and_a_resume_matching_one_is_not_warned(
        groovy, tmp_path):
    """Reviews' cases: recorded at start-up, settings of a run stopped before EMBED were named by the
    next warning; recorded on success only, a run that failed after EMBED (PREDICT, Ctrl-C) left none
    and the next -resume changing them was not warned; one set kept per session, going back to the
    first run's settings was warned though every shard was cached."""
    record = tmp_path / "virnucpro-sessions" / "a-session"
    assert _embed_key_run(groovy, tmp_path, 512, embedded=True, resume=False) == ""
    stopped = _embed_key_run(groovy, tmp_path, 1024, embedded=False)  # stopped at the warning, as advised
    assert "--token_budget 1024: the run this -resume continues used 512" in stopped, stopped
    assert "resume with --token_budget 512" in stopped
    assert "1024" not in record.read_text()
    assert _embed_key_run(groovy, tmp_path, 512, embedded=True) == ""  # following the advice: no warning
    moved = _embed_key_run(groovy, tmp_path, 2048, embedded=True)  # warned, went on, and its shards embedded
    assert "used 512" in moved
    assert _embed_key_run(groovy, tmp_path, 512, embedded=True) == ""  # both sets key cached shards
    assert _embed_key_run(groovy, tmp_path, 2048, embedded=True) == ""
    assert "used 2048" in _embed_key_run(groovy, tmp_path, 4096, embedded=False)  # the latest set is named
    lines = record.read_text().splitlines()
    assert [json.loads(line)["token_budget"] for line in lines] == ["512", "2048"], lines
    record.write_text("/ck\n")  # an earlier version's record: the checkpoint folder alone
    assert _embed_key_run(groovy, tmp_path, 4096, embedded=False) == ""


def test_embed_settings_that_cannot_be_recorded_are_warned_and_never_end_the_run(groovy, tmp_path):
    """A review's case: on s3:// an atomic move throws IllegalArgumentException (no IOException), which
    escaped the channel subscriber that records the settings and ended the run after its first shard."""
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions("embedSettingsText", "recordEmbedSettings",
                                                           "recordedEmbedSettings"),
                      "java.nio.file.Path.metaClass.getText = { -> java.nio.file.Files.readString(delegate) }",
                      "warned = []", "log = [warn: { String message -> warned << message }]",
                      "java.nio.file.Files.metaClass.static.move = { java.nio.file.Path a, java.nio.file.Path b, "
                      "java.nio.file.CopyOption... options -> throw new IllegalArgumentException('Atomic move not supported') }",
                      "try { recordEmbedSettings(file(record), [checkpoint_dir: '/ck']) } "
                      "finally { GroovySystem.metaClassRegistry.removeMetaClass(java.nio.file.Files) }",
                      "outcome { error(warned.join(' / ')) }"])
    record = tmp_path / "virnucpro-sessions" / "a-session"
    said = groovy.evaluate({"record": str(record)}, [("outcome", code, False)])["outcome"]
    assert said.startswith(f"EMBED settings of this session not recorded in {record} "
                           "(java.lang.IllegalArgumentException: Atomic move not supported)"), said
    assert "will not be warned" in said


MODELS_KEY_STAND_INS = """
java.nio.file.Path.metaClass.eachFileRecurse = { groovy.io.FileType type, Closure each ->
    java.nio.file.Files.walk(delegate).withCloseable { paths ->
        paths.filter { path -> java.nio.file.Files.isRegularFile(path) }.sorted().forEach { path -> each(path) } } }
java.nio.file.Path.metaClass.size = { -> java.nio.file.Files.size(delegate) }
java.nio.file.Path.metaClass.lastModified = { -> java.nio.file.Files.getLastModifiedTime(delegate).toMillis() }
String.metaClass.md5 = { -> java.security.MessageDigest.getInstance('MD5').digest(delegate.bytes).encodeHex().toString() }
"""


def _models_groovy(groovy, models, expression: str) -> str:
    code = "\n".join([NEXTFLOW_STAND_INS, MODELS_KEY_STAND_INS,
                      _utils_functions("modelsCacheKey", "isModelsBookkeeping", "encoderPins", "readModelsManifest"),
                      f"dir = file('{models}')", f"outcome {{ error({expression}) }}"])
    return groovy.evaluate({}, [("outcome", code, False)])["outcome"]


def _models_key(groovy, models) -> str:
    return _models_groovy(groovy, models, "modelsCacheKey(dir, encoderPins(dir))")


def pinned_models(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bin" / "pinned_models.py"), *map(str, args)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("role, name", [("esm2", "esm2_tiny.pt"), ("dnabert_s", "DNABERT-S-tiny/model.safetensors")])
def test_embed_tasks_refuse_a_models_folder_changed_since_the_run_started(groovy, tiny_models, golden_embeddings,
                                                                          tmp_path, role, name):
    """A review's case: a models folder updated during a run (the key was made at its start) gave
    samples embedded with two model sets, and a -resume after the folder was put back reused them.
    The pins the workflow reads at the start are what bin/pinned_models.py checks in each task, for
    each encoder (a check of ESM-2 alone passed every test)."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    pins = _models_groovy(groovy, models, "groovy.json.JsonOutput.toJson(encoderPins(dir) ?: [:])")
    assert set(json.loads(pins)) == {"esm2", "dnabert_s"}, pins
    done = pinned_models("--pins", pins, "--models", models, "--embedding", golden_embeddings[0])
    assert done.returncode == 0, done.stderr
    manifest = json.loads((models / "manifest.json").read_text())
    assert name in manifest["models"][role]["sha256"]
    manifest["models"][role]["sha256"][name] = "0" * 64  # the folder now holds other weights
    (models / "manifest.json").write_text(json.dumps(manifest))
    changed = pinned_models("--pins", pins, "--models", models)
    assert changed.returncode == 5 and "changed since this pipeline run started" in changed.stderr, changed.stderr
    assert role in changed.stderr, changed.stderr
    other = _models_groovy(groovy, models, "groovy.json.JsonOutput.toJson(encoderPins(dir) ?: [:])")
    made = pinned_models("--pins", other, "--embedding", golden_embeddings[0])
    assert made.returncode == 5 and "the models folder changed during the run" in made.stderr, made.stderr
    assert "Traceback" not in changed.stderr + made.stderr
    del manifest["models"][role]["sha256"]  # the folder's manifest no longer tells the encoder's weights
    (models / "manifest.json").write_text(json.dumps(manifest))
    silent = pinned_models("--pins", pins, "--models", models)
    assert silent.returncode == 5 and f"no longer records {role}'s checksums" in silent.stderr, silent.stderr


def test_embed_tasks_refuse_an_embedding_that_records_no_identity_for_a_pinned_encoder(groovy, tiny_models,
                                                                                       golden_embeddings, tmp_path):
    """An embedding silent about an encoder the run pinned is not taken as made with it: the shard's
    own checks refuse a record without the encoder's sha256 before the pins are compared."""
    from h5_helpers import edited_shard

    pins = _models_groovy(groovy, tiny_models, "groovy.json.JsonOutput.toJson(encoderPins(dir) ?: [:])")
    silent = tmp_path / "silent.h5"
    shutil.copy(golden_embeddings[0], silent)
    with edited_shard(silent) as handle:
        models = json.loads(handle.attrs["models"])
        del models["dnabert_s"]["sha256"]
        handle.attrs["models"] = json.dumps(models)
    done = pinned_models("--pins", pins, "--embedding", silent)
    assert done.returncode == 5 and f"{silent} is not a valid virnucpro embedding shard" in done.stderr, done.stderr
    assert "attribute models must be JSON of role -> {name, sha256}" in done.stderr and "Traceback" not in done.stderr


def test_predict_tasks_refuse_a_classifier_changed_since_the_run_started(groovy, tiny_models, tmp_path):
    """A review's case: a classifier replaced in the models folder during a run scored the samples
    predicted after it, exit 0. Its sha256 read at the start is what each PREDICT task checks."""
    import hashlib

    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions("classifierSha256", "sha256Of", "classifierFiles",
                                                           "readModelsManifest", "userClassifierFiles"),
                      "java.nio.file.Path.metaClass.isFile = { -> java.nio.file.Files.isRegularFile(delegate) }",
                      f"models = file('{tiny_models}')",
                      "outcome { error([classifierSha256(classifierFiles(models, 500), false), "
                      f"classifierSha256(userClassifierFiles(file('{tiny_models / '300_model_tiny.pth'}')), true), "
                      "classifierSha256([file('/no/such.pth')], true)].join(' ')) }"])
    pinned, user, missing = (groovy.evaluate({}, [("outcome", code, False)])["outcome"].split(" ") + [""])[:3]
    assert pinned == hashlib.sha256((tiny_models / "500_model_tiny.pth").read_bytes()).hexdigest()
    assert user == hashlib.sha256((tiny_models / "300_model_tiny.pth").read_bytes()).hexdigest() and missing == ""
    run_info = tmp_path / "run_info.json"  # as predict records the classifier it loaded (the engine tests run it)
    run_info.write_text(json.dumps({"classifier": {"path": "_input/models/500_model_tiny.pth", "sha256": pinned}}))
    assert pinned_models("--classifier-sha256", pinned, "--run-info", run_info).returncode == 0
    changed = pinned_models("--classifier-sha256", user, "--run-info", run_info)
    assert changed.returncode == 5 and "the classifier changed during the run" in changed.stderr, changed.stderr
    for content in ("{}", '{"classifier": null}', "[]"):  # a run_info.json that does not say: exit 5, no traceback
        run_info.write_text(content)
        unsaid = pinned_models("--classifier-sha256", pinned, "--run-info", run_info)
        assert unsaid.returncode == 5 and "cannot read the classifier's sha256" in unsaid.stderr, unsaid.stderr
        assert "Traceback" not in unsaid.stderr


@pytest.mark.parametrize("pins", ["{}", '{"esm2": {"files": null, "sha256": null}}',
                                  '{"esm2": {"files": ["esm2_tiny.pt"]}}'],
                         ids=["no manifest", "no entry", "no sha256 recorded"])
def test_pins_that_cannot_tell_an_encoder_check_nothing(golden_embeddings, tmp_path, pins):
    assert pinned_models("--pins", pins, "--models", tmp_path, "--embedding", golden_embeddings[0]).returncode == 0


def test_pins_that_are_not_json_of_entries_are_exit_5_without_a_traceback(tmp_path):
    done = pinned_models("--pins", "[1, 2]", "--models", tmp_path)
    assert done.returncode == 5 and "--pins is not JSON" in done.stderr and "Traceback" not in done.stderr


def test_the_embed_key_follows_the_manifests_encoder_entries_not_its_fp16_record(groovy, tiny_models, tmp_path):
    """A review's case: the manifest was left out of EMBED's key (virnucpro records the fp16 copy in
    it), so re-pointing its esm2 entry at other weights kept the old embeddings: PREDICT then refused
    them (exit 5) and only a run without -resume, PREPARE included, got out of it."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    manifest_path = models / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    before = _models_key(groovy, models)
    manifest["models"]["esm2"]["fp16"] = {"file": "esm2_tiny.fp16.safetensors"}  # what an fp16 run records
    manifest_path.write_text(json.dumps(manifest))
    assert _models_key(groovy, models) == before
    reordered = {**manifest, "models": {role: {**entry, "sha256": dict(reversed(list(entry.get("sha256", {}).items())))}
                                        for role, entry in manifest["models"].items()}}
    manifest_path.write_text(json.dumps(reordered, indent=2, sort_keys=True))  # `jq -S`: the same manifest
    assert _models_key(groovy, models) == before
    manifest["models"]["esm2"]["sha256"]["esm2_tiny.pt"] = "0" * 64  # now names other weights
    manifest_path.write_text(json.dumps(manifest))
    assert _models_key(groovy, models) != before


LOGGED = """
warned = []
informed = []
log = [warn: { String message -> warned << message }, info: { String message -> informed << message }]
"""


def _logged_check(groovy, functions, call: str) -> tuple[str, str, str]:
    """(outcome, warnings, info messages) of `call`, each list joined by ' | '."""
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions(*functions), LOGGED,
                      f"result = outcome {{ {call} }}",
                      "outcome { error([result, warned.join(' | '), informed.join(' | ')].join(' || ')) }"])
    return tuple(groovy.evaluate({}, [("outcome", code, False)])["outcome"].split(" || "))


def _sample_results(folder: Path) -> Path:
    """A sample folder as PREDICT publishes it (its tables)."""
    folder.mkdir(parents=True)
    for name in ("prediction_results.txt", "run_info.json", "sequences.tsv"):
        (folder / name).write_text("x\n")
    return folder


def test_sample_folders_of_an_earlier_run_that_this_run_has_not_are_said(groovy, tmp_path):
    """A reviewer's case: a sample removed (or renamed) in the samplesheet kept its folder in
    --outdir, unsaid, beside a summary and report that list the other samples only."""
    outdir = tmp_path / "results"
    for name in ("S1", "S2", "old_name"):
        _sample_results(outdir / name)
    _sample_results(outdir / "cli_output").joinpath(".virnucpro.json").write_text("{}")  # a command's: refused elsewhere
    (outdir / "notes").mkdir()  # the user's own folder: no tables, not a sample's
    (outdir / "pipeline_info").mkdir()
    # a later review's case: an interrupted run published a sample's prepared/ (or embeddings/) only
    (outdir / "cut_short" / "prepared").mkdir(parents=True)
    (outdir / "embedded_only" / "embeddings").mkdir(parents=True)
    functions = ["warnEarlierSamples", "runOwnNames", "unfinishedMarkName", "commandMarker", "isRunsOwnEntry",
                 "samplePublished", "predictOutputs"]
    result, warned, _ = _logged_check(groovy, functions, f"warnEarlierSamples('{outdir}', ['S1', 'S3'])")
    assert result == "passed", result
    assert ("holds the results (or part of them) of samples 'S2', 'cut_short', 'embedded_only', 'old_name' "
            "from an earlier run") in warned, warned
    assert "S1" not in warned and "cli_output" not in warned and "notes" not in warned
    # on a file system that tells case apart, S1/ is not sample s1's folder (a second review's case)
    result, warned, _ = _logged_check(groovy, functions, f"warnEarlierSamples('{outdir}', "
                                                         "['s1', 'S2', 'old_name', 'cut_short', 'embedded_only'])")
    assert "holds the results (or part of them) of sample 'S1' from an earlier run" in warned, warned
    everyone = "['S1', 'S2', 'old_name', 'cut_short', 'embedded_only']"
    assert _logged_check(groovy, functions, f"warnEarlierSamples('{outdir}', {everyone})")[1] == ""
    assert _logged_check(groovy, functions, f"warnEarlierSamples('{tmp_path / 'new'}', ['S1'])")[:2] == ("passed", "")


SEAL = b"virnucpro embedding shard seal 1\n"


def test_embedding_shards_an_earlier_run_published_beyond_this_runs_are_removed_and_only_those(groovy, tmp_path):
    """A reviewer's case: with --save_embeddings, an input that got shorter (3 shards, then 1) left
    shard_00001.h5 and shard_00002.h5 of the earlier run beside this run's shard_00000.h5, and
    `virnucpro predict` over embeddings/*.h5 refused them. Files virnucpro did not write are kept."""
    folder = tmp_path / "results" / "E" / "embeddings"
    folder.mkdir(parents=True)
    for name in ("shard_00000.h5", "shard_00001.h5", "shard_00002.h5"):
        (folder / name).write_bytes(SEAL + b"\0" * 100)
    (folder / "shard_00003.h5").write_bytes(b"\x89HDF\r\n\x1a\n not sealed: the user's")
    (folder / "my_notes.h5").write_bytes(SEAL)
    target = tmp_path / "elsewhere.h5"
    target.write_bytes(SEAL)
    (folder / "shard_00004.h5").symlink_to(target)  # a link a `-publish_dir_mode symlink` run left, or the user's
    os.mkfifo(folder / "shard_00005.h5")  # never opened: it would wait for a writer for ever (a second review's case)
    functions = ["removeEarlierShards", "isSealedShard"]
    results = tmp_path / "results"
    result, warned, informed = _logged_check(groovy, functions, f"removeEarlierShards('{results}', 'E', ['shard_00000.h5'], false)")
    assert result == "passed" and warned == "", (result, warned)
    assert sorted(p.name for p in folder.iterdir()) == ["my_notes.h5", "shard_00000.h5", "shard_00003.h5", "shard_00004.h5",
                                                        "shard_00005.h5"]
    assert "removed 2 embedding shards" in informed and "shard_00001.h5, shard_00002.h5)" in informed
    assert "this run's input has 1 shard" in informed, informed
    # a run that publishes links removes the earlier run's links (as links)
    result, warned, informed = _logged_check(groovy, functions, f"removeEarlierShards('{results}', 'E', ['shard_00000.h5'], true)")
    assert (result, warned) == ("passed", "") and "removed 1 embedding shard" in informed and "(shard_00004.h5)" in informed
    assert sorted(p.name for p in folder.iterdir()) == ["my_notes.h5", "shard_00000.h5", "shard_00003.h5", "shard_00005.h5"]
    assert target.read_bytes() == SEAL, "the file a link pointed to was touched"
    again = _logged_check(groovy, functions, f"removeEarlierShards('{results}', 'E', ['shard_00000.h5'], true)")
    assert again == ("passed", "", ""), again
    assert _logged_check(groovy, functions, f"removeEarlierShards('{results}', 'gone', ['shard_00000.h5'], false)") == ("passed", "", "")


@pytest.mark.parametrize("where", ["checkpoint", "work"])
def test_a_sample_named_like_the_runs_own_folder_in_outdir_is_refused(groovy, tmp_path, where):
    """A reviewer's case: `--checkpoint_dir results/ckpt` and a sample `ckpt` put the checkpoints and
    the sample's tables in one folder; `rm -r results/ckpt` to drop the checkpoints removed the results."""
    outdir = tmp_path / "results"
    (outdir / "Ckpt" / "deeper").mkdir(parents=True)
    inside = str(outdir / "Ckpt" / "deeper")
    folders = f"[checkpoint: '{inside}', work: '']" if where == "checkpoint" else f"[checkpoint: '', work: '{inside}']"
    functions = ["refuseSamplesOverRunFolders", "canonicalPath", "checkpointEntries"]
    message = _startup_check(groovy, functions, f"refuseSamplesOverRunFolders('{outdir}', ['a', 'ckpt'], {folders})")
    assert f"Sample 'ckpt' would share its results folder with this run's own {inside} ({outdir / 'Ckpt'})" in message, message
    assert message.count("Sample 'ckpt'") == 1, message
    assert _startup_check(groovy, functions, f"refuseSamplesOverRunFolders('{outdir}', ['a', 'b'], {folders})") == "passed"
    outside = f"[checkpoint: '{tmp_path / 'ckpt'}', work: '{tmp_path / 'work'}']"
    assert _startup_check(groovy, functions, f"refuseSamplesOverRunFolders('{outdir}', ['ckpt', 'work'], {outside})") == "passed"


def test_a_checkpoint_folder_that_is_outdir_keeps_its_own_names_from_the_samples(groovy, tmp_path):
    """A second review's case: `--checkpoint_dir results --outdir results` and a sample `samples`
    put the sample's tables and every sample's checkpoints in results/samples/."""
    outdir = tmp_path / "results"
    outdir.mkdir()
    functions = ["refuseSamplesOverRunFolders", "canonicalPath", "checkpointEntries"]
    folders = f"[checkpoint: '{outdir}', work: '{tmp_path / 'work'}']"
    message = _startup_check(groovy, functions, f"refuseSamplesOverRunFolders('{outdir}', ['Samples', 'x'], {folders})")
    assert f"Sample 'Samples' would share its results folder with this run's own {outdir}/samples" in message, message
    assert _startup_check(groovy, functions, f"refuseSamplesOverRunFolders('{outdir}', ['a', 'b'], {folders})") == "passed"


# --------------------------------------------------------------------------------------------------
# Cloud batch executors (awsbatch and google profiles): what Nextflow 24.10 does there
# --------------------------------------------------------------------------------------------------

def _base_closure(groovy, key: str, task: dict, profile: str = "standard", meta: dict | None = None, **params):
    """A process-scope closure of conf/base.config, evaluated for one task (of sample `meta`)."""
    bindings = {"params": {**PARAMS, **params}, "task": task, "workflow": {"profile": profile, "containerEngine": None},
                "meta": meta or {"id": "s1"}}
    return groovy.evaluate(bindings, [(key, assignments(BASE_CONFIG)[key], True)])[key]


def _cloud_check(groovy, functions, call: str, profile: str) -> tuple[str, str, str]:
    """(outcome, warnings, info messages) of a start-up check run under `-profile <profile>`, no container engine."""
    code = "\n".join([NEXTFLOW_STAND_INS, _utils_functions(*functions), LOGGED,
                      f"workflow = [workDir: file('/work-of-no-run'), profile: '{profile}', containerEngine: null, preview: false]",
                      f"result = outcome {{ {call} }}",
                      "outcome { error([result, warned.join(' | '), informed.join(' | ')].join(' || ')) }"])
    return tuple(groovy.evaluate({}, [("outcome", code, False)])["outcome"].split(" || "))


def test_every_task_of_the_image_runs_as_root_on_google_batch(groovy):
    """A review's case: the image runs as USER 1000:1000, and Google Batch on Nextflow 24.10 mounts the
    work bucket with gcsfuse without allow_other (nextflow-io/nextflow#4880): only root can read and
    write the task's files there. Every task runs as root under google-batch, EMBED (whose own
    containerOptions replace the process scope's) included; other executors keep the image's user."""
    assert _base_closure(groovy, "containerOptions", {"executor": "google-batch"}) == "--user 0:0"
    for executor in ("awsbatch", "slurm", None):
        assert not _base_closure(groovy, "containerOptions", {"executor": executor})
    embed = _embed_closure(groovy, "containerOptions", engine=None, device="cuda", profile="google", executor="google-batch")
    assert _shell_words(embed) == ["--user", "0:0"], embed
    assert "--user" not in _embed_closure(groovy, "containerOptions", engine="docker", device="cpu", executor="local")
    for path in [REPO / "nextflow.config", *sorted((REPO / "conf").glob("*.config"))]:
        for key, closure in assignments(path.read_text()).items():
            if key.endswith("containerOptions"):  # any other block would replace the process scope's
                assert "google-batch" in closure and "--user 0:0" in closure, f"{path.name}: {key}"


def test_the_models_download_is_refused_at_start_up_where_a_batch_executor_cannot_store_it(groovy):
    """A review's case: the default --models_store (a relative folder, the storeDir of the download)
    failed on AWS and Google Batch after the multi-GB download; refused at once, naming the way out."""
    def check(profile, **given):
        parameters = {"outdir": "/r/results", "models_store": "virnucpro-models", "models": None, "tiny_models": False,
                      **given}
        return _parameter_paths_check(groovy, parameters, profile=profile)
    aws = check("awsbatch,gpu")
    assert aws.startswith("--models_store virnucpro-models: ") and "s3://" in aws and "--models" in aws, aws
    google = check("google", models_store="s3://bucket/models")
    assert "gs://" in google and "google-batch" in google, google
    assert check("awsbatch", models_store="s3://bucket/virnucpro-models") == "passed"
    assert check("google,gpu", models_store="gs://bucket/virnucpro-models") == "passed"
    assert check("awsbatch", models="s3://bucket/models") == "passed"
    assert check("google", tiny_models=True) == "passed"
    assert check("docker,gpu") == "passed" and check("slurm") == "passed"


def test_a_checkpoint_folder_under_a_batch_executor_is_not_made_on_the_launch_host(groovy, tmp_path):
    """A review's case: under awsbatch/google the tasks run on other hosts, where the folder must be
    mounted: making and testing it on the launch machine refused a path only the hosts have."""
    (tmp_path / "a file").write_text("")
    requested = str(tmp_path / "a file" / "ck")
    for profile in ("awsbatch", "google,gpu"):
        result = _cloud_check(groovy, CHECKPOINT_DIR_FUNCTIONS, f"checkpointDir('{requested}', workflow.workDir)", profile)
        assert result[0] == "passed", result
    result = _cloud_check(groovy, CHECKPOINT_DIR_FUNCTIONS, f"checkpointDir('{requested}', workflow.workDir)", "slurm")
    assert result[0].startswith(f"--checkpoint_dir {requested} cannot be created"), result


@pytest.mark.parametrize("profile, device, gpu_type, label, asked", [
    ("awsbatch", "cuda", None, "process_gpu", 1),  # --device cuda alone: EMBED failed exit 8 without a GPU
    ("google", "cuda", "nvidia-l4", "process_gpu", "[request:1, type:nvidia-l4]"),
    ("awsbatch,gpu", "auto", None, "process_gpu", 1),
    ("google,gpu", "auto", "nvidia-l4", "process_gpu", "[request:1, type:nvidia-l4]"),
    ("awsbatch", "auto", None, "process_gpu", None),
    ("awsbatch,gpu", "cpu", None, "process_gpu", None),
    ("awsbatch", "cuda", None, "process_medium", None),
])
def test_embed_asks_the_executor_for_a_gpu_with_the_gpu_profile_or_device_cuda(groovy, profile, device, gpu_type,
                                                                               label, asked):
    """The accelerator request follows the rule of the containers' GPUs and SLURM's --gres."""
    got = _base_closure(groovy, "accelerator", {"label": [label]}, profile, device=device, gpu_type=gpu_type)
    assert got == asked, got


GOOGLE_GPU_CHECK = ["checkGoogleGpuType", "googleAttachableGpus", "googleBuiltInGpus"]


def test_google_batch_needs_a_gpu_type_with_device_cuda_too(groovy):
    """Google Batch has no default GPU type: --device cuda under google alone asks for a GPU too."""
    call = "checkGoogleGpuType(null, '{}', null)"
    assert "google --device cuda: Google Batch needs the GPU type" in _cloud_check(
        groovy, GOOGLE_GPU_CHECK, call.format("cuda"), "google")[0]
    said = _cloud_check(groovy, GOOGLE_GPU_CHECK, call.format("cuda"), "google,gpu")[0]
    assert "-profile google,gpu: Google Batch needs the GPU type" in said, said  # the profile set the device
    assert _cloud_check(groovy, GOOGLE_GPU_CHECK, call.format("auto"), "google")[0] == "passed"
    assert _cloud_check(groovy, GOOGLE_GPU_CHECK, call.format("cpu"), "google,gpu")[0] == "passed"


@pytest.mark.parametrize("gpu_type, machine_type, refusal", [
    ("nvidia-tesla-t4", None, None),
    ("nvidia-tesla-v100", "n1-highmem-8,n1-standard-*", None),
    ("nvidia-tesla-t4", "custom-8-53248", None),  # a custom N1 type has no n1- prefix
    (None, "template://gpu-l4", None),  # the template holds the GPU
    ("nvidia-l4", "template://gpu-l4", None),
    ("nvidia-l4", None, None),  # its one-GPU G2 type by default
    ("nvidia-h100-80gb", "a3-highgpu-1g", None),
    ("nvidia-l4", "g2-standard-16,g2-standard-32", None),
    ("nvidia-l4", "g2-*", "nvidia-l4 comes built into g2-* machine types, and EMBED asks for one GPU"),
    ("nvidia-l4", "g2-standard-24", "give exact types with one"),  # two L4s (a later review's case)
    ("nvidia-tesla-a100", "a2-highgpu-2g", "give exact types with one"),
    ("nvidia-tesla-a100", "n1-highmem-8", "comes built into a2-highgpu-* machine types"),
    ("nvidia-tesla-t4", "n2-highmem-8", "--google_machine_type n2-highmem-8: Compute Engine attaches nvidia-tesla-t4 "
                                        "to N1 VMs only"),
    ("nvidia-tesla-t4", "n1-*,g2-*", "to N1 VMs only"),
    ("nvidia-rtx-pro-6000", None, "--gpu_type nvidia-rtx-pro-6000: the machine type that GPU attaches to or comes "
                                  "with is not known here"),
    ("nvidia-rtx-pro-6000", "g4-standard-48", None),  # the user knows its machine type
])
def test_google_batch_gpus_are_refused_where_compute_engine_cannot_attach_them(groovy, gpu_type, machine_type,
                                                                               refusal):
    """A review's case: Google Batch put EMBED on the cheapest general-purpose VM (cloudinfo picks among
    n1, n2, c2, e2...) with the GPU attached, which Compute Engine does on N1 VMs only; an L4, A100 or
    H100 comes built into its own machine type. What cannot be created is refused before PREPARE,
    with the fix; what can run passes."""
    quoted = lambda value: "null" if value is None else f"'{value}'"
    call = f"checkGoogleGpuType({quoted(gpu_type)}, 'auto', {quoted(machine_type)})"
    outcome = _cloud_check(groovy, GOOGLE_GPU_CHECK, call, "google,gpu")[0]
    if refusal is None:
        assert outcome == "passed", outcome
    else:
        assert refusal in outcome and "--google_machine_type" in outcome, outcome
    assert _cloud_check(groovy, GOOGLE_GPU_CHECK, call, "google")[0] == "passed"  # no GPU asked for


@pytest.mark.parametrize("executor, profile, device, gpu_type, machine_type, asked", [
    ("google-batch", "google,gpu", "auto", "nvidia-tesla-t4", None, "n1-*"),
    ("google-batch", "google", "cuda", "nvidia-tesla-v100", None, "n1-*"),
    ("google-batch", "google,gpu", "auto", "nvidia-l4", None, "g2-standard-12,g2-standard-16,g2-standard-32"),
    ("google-batch", "google,gpu", "auto", "nvidia-h100-80gb", None, "a3-highgpu-1g"),
    ("google-batch", "google,gpu", "auto", "nvidia-l4", "template://gpu-l4", "template://gpu-l4"),
    ("google-batch", "google", "auto", "nvidia-l4", None, None),  # on the CPU: the cheapest VM that fits
    ("google-batch", "google,gpu", "cpu", "nvidia-l4", None, None),
    ("awsbatch", "awsbatch,gpu", "auto", None, "n1-*", None),
])
def test_embed_asks_google_batch_for_a_vm_its_gpu_attaches_to(groovy, executor, profile, device, gpu_type,
                                                              machine_type, asked):
    """The machine type follows the GPU request; other tasks and executors are left to choose."""
    task = {"label": ["process_gpu"], "executor": executor}
    settings = {"device": device, "gpu_type": gpu_type, "google_machine_type": machine_type}
    assert _base_closure(groovy, "machineType", task, profile, **settings) == asked
    other = {"label": ["process_medium"], "executor": executor}
    assert _base_closure(groovy, "machineType", other, profile, **settings) is None


def test_the_default_machine_types_of_built_in_gpus_are_the_start_up_checks(groovy):
    """conf/base.config and googleBuiltInGpus hold the same table: each default passes the check."""
    code = "\n".join([_utils_functions("googleBuiltInGpus"),
                      "result = googleBuiltInGpus().collect { gpu, family -> gpu + '=' + family[1] }.join(' ')"])
    table = dict(pair.split("=") for pair in groovy.evaluate({}, [("result", code, False)])["result"].split())
    assert len(table) == 4
    for gpu, machine in table.items():
        task = {"label": ["process_gpu"], "executor": "google-batch"}
        assert _base_closure(groovy, "machineType", task, "google,gpu", device="auto", gpu_type=gpu) == machine
        assert _cloud_check(groovy, GOOGLE_GPU_CHECK, f"checkGoogleGpuType('{gpu}', 'auto', '{machine}')",
                            "google,gpu")[0] == "passed"


def test_multiqc_missing_here_is_not_warned_under_a_batch_executor(groovy):
    """MULTIQC runs in its container on the batch hosts: the launch host's PATH is no concern there."""
    if shutil.which("multiqc"):
        pytest.skip("multiqc is on this machine's PATH")
    functions = ["warnIfMultiqcMissing", "batchExecutor"]
    assert "multiqc is not on the PATH" in _cloud_check(groovy, functions, "warnIfMultiqcMissing(false)", "slurm")[1]
    for profile in ("awsbatch", "google,gpu"):
        assert _cloud_check(groovy, functions, "warnIfMultiqcMissing(false)", profile)[1] == ""


@pytest.mark.parametrize("profile", ["awsbatch", "google"])
def test_cloud_profiles_resolve_the_gpu_request_and_the_root_user(resolved, profile):
    settings = resolved(profile)
    assert "process.accelerator" in settings and "process.containerOptions" in settings, sorted(settings)


def _repeated_files_check(groovy, rows) -> str:
    groovy_rows = ", ".join(f"[[id: '{sample}'], file('{path}')]" for sample, path in rows)
    return _startup_check(groovy, ["checkRepeatedFiles", "fileIdentity", "canonicalPath"],
                          f"checkRepeatedFiles([{groovy_rows}], 'sheet.csv')")


def test_one_file_under_two_names_for_one_sample_is_refused_at_start_up(groovy, tmp_path):
    """A hostile reviewer's case: a hard link was only found by PREPARE, naming its staged copies, and
    the whole run stopped there. Both names are given, and the other cases stay as they were."""
    reads = tmp_path / "reads.fa"
    reads.write_text(">a\nACGT\n")
    os.link(reads, tmp_path / "hard.fa")
    (tmp_path / "soft.fa").symlink_to(reads)
    (tmp_path / "other.fa").write_text(">a\nACGT\n")
    message = _repeated_files_check(groovy, [("s", reads), ("s", tmp_path / "hard.fa")])
    assert f"sheet.csv lists one file under the names {reads} and {tmp_path / 'hard.fa'} (hard links) for sample 's'" \
        in message, message
    message = _repeated_files_check(groovy, [("s", reads), ("s", tmp_path / "soft.fa")])
    assert f"the file {reads} for sample 's' more than once" in message, message
    assert _repeated_files_check(groovy, [("s", reads), ("t", tmp_path / "hard.fa")]) == "passed"
    assert _repeated_files_check(groovy, [("s", reads), ("s", tmp_path / "other.fa")]) == "passed"


def _classifier_encoders_check(groovy, classifier, models) -> str:
    return _startup_check(groovy, ["checkClassifierEncoders", "recordsClassifier", "encoderClash", "identityShas",
                                   "encoderPins", "readModelsManifest", "sha256Of"],
                          f"checkClassifierEncoders('{classifier}', '{models}')")


def test_a_classifier_of_other_encoders_than_models_is_refused_at_start_up(groovy, tiny_models, tmp_path):
    """A review of the fix in predict: the pipeline ran every EMBED task, then PREDICT refused with a
    hint naming its staged folder. Refused at start-up now, naming both folders; a link to the
    classifier too; the user's own (recorded nowhere) and the folder's own classifier pass."""
    from virnucpro.models import tiny

    other = tmp_path / "other"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny, "TINY_SEED", tiny.TINY_SEED + 1)
        tiny.make_tiny(other)
    message = _classifier_encoders_check(groovy, other / "500_model_tiny.pth", tiny_models)
    assert f"--classifier {other / '500_model_tiny.pth'} belongs to the models in {other}" in message, message
    assert f"--models {tiny_models} holds another esm2 model" in message, message
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "cls.pth").symlink_to(other / "500_model_tiny.pth")
    assert "belongs to the models in" in _classifier_encoders_check(groovy, tmp_path / "mine" / "cls.pth", tiny_models)
    assert _classifier_encoders_check(groovy, tiny_models / "500_model_tiny.pth", tiny_models) == "passed"
    assert _classifier_encoders_check(groovy, other / "500_model_tiny.pth", other) == "passed"
    lean = Path(shutil.copytree(other, tmp_path / "lean"))  # its manifest without the contact-regression file,
    manifest = json.loads((lean / "manifest.json").read_text())  # which is no part of an encoder's identity
    manifest["models"]["esm2"]["sha256"].pop("esm2_tiny-contact-regression.pt")
    manifest["models"]["esm2"]["files"].remove("esm2_tiny-contact-regression.pt")
    manifest["models"]["dnabert_s"] = json.loads((tiny_models / "manifest.json").read_text())["models"]["dnabert_s"]
    (lean / "manifest.json").write_text(json.dumps(manifest))  # (the same DNABERT-S: ESM-2 alone tells them apart)
    message = _classifier_encoders_check(groovy, lean / "500_model_tiny.pth", tiny_models)
    assert f"belongs to the models in {lean}" in message and "holds another esm2 model" in message, message
    shutil.copy(other / "500_model_tiny.pth", tmp_path / "mine" / "own.pth")
    (other / "manifest.json").unlink()  # now recorded nowhere: the user's own
    assert _classifier_encoders_check(groovy, tmp_path / "mine" / "own.pth", tiny_models) == "passed"
