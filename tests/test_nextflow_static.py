"""Static checks of the pipeline that the Nextflow language server does not make: channel names
and call arity across files, parameters between config and schema, config selectors, the exit
codes the retry rules use, the test profile against the schema. Pure Python, no Java needed."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import jsonschema
import pytest

from nextflow_helpers import (
    REPO,
    assignments,
    config_params,
    mask,
    out_references,
    parse_pipeline,
    pipeline_files,
    process_calls,
    profile_bodies,
    profile_params,
    selector_blocks,
)
from virnucpro import __version__
from virnucpro.errors import ExitCode

SCRIPTS = parse_pipeline()
PROCESSES = {p.name: p for s in SCRIPTS.values() for p in s.processes}
WORKFLOWS = {w.name: w for s in SCRIPTS.values() for w in s.workflows if w.name}
CONFIG = REPO / "nextflow.config"
SCHEMA = json.loads((REPO / "nextflow_schema.json").read_text())
CONFIG_TEXTS = {p: p.read_text() for p in pipeline_files(REPO, (".config",))}

# Every virnucpro module wraps one CLI command of CONTRACTS.md (SUMMARY: a bin/ script), plus MultiQC
EXPECTED_PROCESSES = {"VIRNUCPRO_PREPARE", "VIRNUCPRO_EMBED", "VIRNUCPRO_PREDICT", "VIRNUCPRO_SUMMARY",
                      "VIRNUCPRO_MODELS_DOWNLOAD", "VIRNUCPRO_MODELS_TINY", "VIRNUCPRO_VERSIONS", "MULTIQC"}


def _components(script):
    """alias -> Process or Workflow, for what a script includes (and defines itself)."""
    found = {}
    for include in script.includes:
        if include.path is None:
            continue
        assert include.path.is_file(), f"{script.path}: include from {include.source} resolves to no file"
        target = SCRIPTS[include.path]
        for alias, name in include.names.items():
            defined = {p.name: p for p in target.processes} | {w.name: w for w in target.workflows if w.name}
            assert name in defined or re.match(r"^[a-z]", name), \
                f"{script.path}: {name} is not defined in {include.source}"
            if name in defined:
                found[alias] = defined[name]
    found.update({p.name: p for p in script.processes})
    found.update({w.name: w for w in script.workflows if w.name})
    return found


def _schema_params():
    params = {}
    for group in SCHEMA.get("$defs", {}).values():
        params.update(group["properties"])
    params.update(SCHEMA.get("properties", {}))
    return params


def test_every_module_exists_once():
    assert set(PROCESSES) == EXPECTED_PROCESSES
    names = [p.name for s in SCRIPTS.values() for p in s.processes]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("path", sorted(SCRIPTS), ids=lambda p: str(p.relative_to(REPO)))
def test_out_references_name_declared_emits(path):
    script = SCRIPTS[path]
    components = _components(script)
    for workflow in script.workflows:
        for name, emit, line in out_references(workflow.body):
            assert name in components, f"{path}: {name}.out.{emit} (line {line} of the workflow): {name} is not included"
            component = components[name]
            emits = component.emits
            assert emit in emits, f"{path}: {name}.out.{emit}: {name} emits only {emits}"


@pytest.mark.parametrize("path", sorted(SCRIPTS), ids=lambda p: str(p.relative_to(REPO)))
def test_calls_pass_one_argument_per_input(path):
    script = SCRIPTS[path]
    components = _components(script)
    for workflow in script.workflows:
        for name, line, args in process_calls(workflow.body, components):
            component = components[name]
            expected = len(component.inputs) if hasattr(component, "inputs") else len(component.takes)
            assert len(args) == expected, \
                f"{path}: {name}(...) at line {line} of the workflow passes {len(args)} arguments, it takes {expected}"


def test_every_process_is_called():
    called = {name for s in SCRIPTS.values() for w in s.workflows
              for name, _line, _args in process_calls(w.body, list(PROCESSES) + list(WORKFLOWS))}
    assert set(PROCESSES) | set(WORKFLOWS) <= called


def test_every_process_has_a_stub_a_label_and_eval_versions():
    for process in PROCESSES.values():
        assert process.stub and process.stub.strip(), f"{process.name} has no stub: block"
        assert len(process.labels) == 1, f"{process.name}: labels {process.labels}"
        versions = [o for o in process.outputs if o.emit and o.emit.startswith("versions_")]
        # storeDir with eval outputs fails on the second run (nextflow-io/nextflow#5785); VERSIONS
        # writes the versions of the others (printf only)
        if process.name in ("VIRNUCPRO_MODELS_DOWNLOAD", "VIRNUCPRO_VERSIONS"):
            assert not versions
        else:
            assert versions and all(o.evals for o in versions), f"{process.name} reports no versions"


def test_no_topic_channels_or_feature_flags():
    """Nextflow 24.10 needs a preview flag for topics, which the strict parser (25.10+) rejects."""
    for path in pipeline_files():
        text = mask(path.read_text())
        assert "topic" not in text and "nextflow.preview" not in text and "nextflow.enable" not in text, path


def test_every_versions_output_reaches_the_versions_file():
    body = WORKFLOWS["VIRNUCPRO"].body
    for process in PROCESSES.values():
        for output in process.outputs:
            if output.emit and output.emit.startswith("versions_") and process.name != "MULTIQC":
                assert f"{process.name}.out.{output.emit}" in body, f"{process.name}.out.{output.emit} not mixed"


def test_schema_and_config_params_agree():
    config = config_params(CONFIG)
    schema = _schema_params()
    assert set(config) - set(schema) == set(), "params in nextflow.config missing from nextflow_schema.json"
    assert set(schema) - set(config) == set(), "params in nextflow_schema.json missing from nextflow.config"
    for name, value in config.items():
        if "default" in schema[name] or value not in (None, False):
            assert schema[name].get("default") == value, f"default of {name}: schema {schema[name].get('default')!r}, config {value!r}"
    for name, spec in schema.items():
        assert spec.get("description"), f"schema param {name} has no description"
        assert spec.get("type"), f"schema param {name} has no type"


def test_schema_is_draft_2020_12_and_groups_are_all_used():
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    refs = {entry["$ref"] for entry in SCHEMA["allOf"]}
    assert refs == {f"#/$defs/{name}" for name in SCHEMA["$defs"]}


def test_every_params_reference_exists():
    known = set(config_params(CONFIG))
    texts = {p: p.read_text() for p in pipeline_files()}
    for path, text in texts.items():
        for name in re.findall(r"(?<![.\w])params\.(\w+)", mask(text)):
            assert name in known, f"{path}: params.{name} is not a pipeline parameter"


def test_params_are_read_only_in_the_entry_workflow_and_configs():
    for path, script in SCRIPTS.items():
        for workflow in script.workflows:
            if workflow.name is not None:
                assert "params." not in mask(workflow.body), f"{path}: workflow {workflow.name} reads params"
        for process in script.processes:
            assert "params." not in mask(process.script + (process.stub or "")), f"{process.name} reads params"


@pytest.mark.parametrize("profile", ["test", "test_full", "gpu"])
def test_profile_params_validate_against_the_schema(profile):
    params = {**config_params(CONFIG), **profile_params(profile)}
    params = {k: v for k, v in params.items() if v is not None}  # nf-schema skips unset params
    if profile != "gpu":
        params["outdir"] = "results"
        assert "input" in params
    else:
        params.update(input="reads.fa", outdir="results")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


@pytest.mark.parametrize("profile", ["test", "test_full"])
def test_test_profile_inputs_exist(profile):
    pattern = profile_params(profile)["input"]
    assert sorted(Path("/").glob(pattern.lstrip("/"))), f"{profile}: --input {pattern} matches no file"


def test_samplesheet_schema_accepts_a_sheet_of_the_test_inputs(tmp_path):
    sheet_schema = json.loads((REPO / "assets" / "schema_input.json").read_text())
    jsonschema.Draft202012Validator.check_schema(sheet_schema)
    files = sorted((REPO / "assets" / "test").glob("sample_*"))
    sheet = tmp_path / "samples.csv"
    with open(sheet, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample", "file"])
        writer.writerows([["together", str(f)] for f in files])
    with open(sheet, newline="") as handle:
        rows = list(csv.DictReader(handle))
    jsonschema.validate(rows, sheet_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"sample": "bad name/with slash", "file": str(files[0])}], sheet_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"sample": "no_file"}], sheet_schema)


def test_selectors_match_processes_and_labels():
    labels_used = {label for p in PROCESSES.values() for label in p.labels}
    labels_configured = set()
    for path, text in CONFIG_TEXTS.items():
        for name in selector_blocks(text, "withName"):
            assert name in PROCESSES, f"{path}: withName: '{name}' matches no process"
        labels_configured |= set(selector_blocks(text, "withLabel"))
    assert labels_configured - labels_used == set(), "withLabel selectors for labels no process has"
    assert labels_used - labels_configured == set(), "process labels with no resources in conf/base.config"


def _retry_codes(closure: str) -> set:
    match = re.search(r"task\.exitStatus\s+in\s+\[([\w.,\s]+)\]\s*\?\s*'retry'\s*:\s*'finish'", closure)
    assert match, f"unexpected errorStrategy: {closure}"
    return {int(x) if x.strip().isdigit() else x.strip() for x in match.group(1).split(",")}


def test_retry_rules_use_the_cli_exit_codes():
    base = CONFIG_TEXTS[REPO / "conf" / "base.config"]
    scheduler_kills = {137, 140, 143, "Integer.MAX_VALUE"}  # the last: a task lost with its node
    embed = assignments(selector_blocks(base, "withLabel")["process_gpu"][0])["errorStrategy"]
    assert _retry_codes(embed) == {int(ExitCode.INTERRUPTED), int(ExitCode.GPU_OOM), int(ExitCode.DEVICE)} | scheduler_kills
    default = re.search(r"^\s*errorStrategy\s*=\s*(\{[^\n]*\})", base, re.M).group(1)
    # PREPARE and PREDICT catch a stop signal too (exit 6, not 143): that is no reason to stop the run
    assert _retry_codes(default) == {int(ExitCode.INTERRUPTED)} | scheduler_kills
    assert PROCESSES["VIRNUCPRO_EMBED"].labels == ["process_gpu"]


def test_resources_scale_with_the_attempt_within_limits():
    base = CONFIG_TEXTS[REPO / "conf" / "base.config"]
    assert re.search(r"^\s*resourceLimits\s*=\s*\[", base, re.M), "no resourceLimits: retries may ask for more than a node has"
    gpu = assignments(selector_blocks(base, "withLabel")["process_gpu"][0])
    assert "task.attempt" not in gpu.get("cpus", ""), "a GPU out-of-memory retry must not ask for more CPUs"
    assert "previousTrace.exit == 137" in gpu["memory"] and "previousTrace.exit == 140" in gpu["time"]
    for label, (body,) in selector_blocks(base, "withLabel").items():
        closures = assignments(body)
        for directive in ("memory", "time"):
            assert "task.attempt" in closures.get(directive, ""), f"{label}: {directive} does not scale with task.attempt"


def test_standard_cache_and_local_storedir_download():
    # 'lenient' (path and size) would reuse a task whose input was edited in place to the same size;
    # EMBED's inputs are a shard in PREPARE's work folder (its path names that task) and the models
    # folder, keyed by the names, sizes and times of its files (models_key, modelsCacheKey); PREPARE's,
    # the user's reads, by their content ('deep': one changed in place with its time restored was reused)
    for path, text in CONFIG_TEXTS.items():
        assert not re.search(r"^\s*(process\.)?cache\s*=", text, re.M), f"{path} sets a cache mode"
    for process in PROCESSES.values():
        text = process.path.read_text()
        if process.name == "VIRNUCPRO_EMBED":
            assert re.search(r"^\s*cache 'lenient'$", text, re.M) and "val(models_key)" in text
        elif process.name == "VIRNUCPRO_PREPARE":
            assert re.search(r"^\s*cache 'deep'$", text, re.M)
        else:
            assert not re.search(r"^\s*cache\s", text, re.M), f"{process.name} sets a cache mode"


def test_every_task_that_runs_virnucpro_requires_the_pipelines_version_first():
    """A virnucpro of another version (a PATH install upgraded) stops the task, and the version is in
    each task's script, so -resume never reuses a task of another pipeline version."""
    for process in PROCESSES.values():
        script = re.search(r"^    script:\n(.*?)^    stub:", process.path.read_text(), re.M | re.S).group(1)
        commands = [line.strip() for line in script.split('"""', 2)[1].splitlines() if line.strip()]
        if any(re.match(r"(virnucpro|gpu_slot\.py .* virnucpro) ", c) or c.startswith("virnucpro ") for c in commands):
            assert commands[0] == "require_virnucpro.sh ${workflow.manifest.version}", f"{process.name}: {commands[:2]}"
    download = PROCESSES["VIRNUCPRO_MODELS_DOWNLOAD"]
    assert re.search(r"^\s*executor\s+'local'", download.path.read_text(), re.M)
    modules = selector_blocks(CONFIG_TEXTS[REPO / "conf" / "modules.config"], "withName")
    assert "params.models_store" in assignments(modules["VIRNUCPRO_MODELS_DOWNLOAD"][0])["storeDir"]


def test_the_models_folder_reaches_embed_as_a_path_in_the_task_folder():
    """A second review's case: EMBED passed `--models ${models}`, the staged folder's own name, so a
    models folder named `~m` was taken for user m's home (by bash itself for an existing user, else
    refused by virnucpro); `./NAME`, quoted, is the folder staged there. NAME is the plain name: a
    review's folder `mo dels` reached embed as `mo\\ dels` (Nextflow's escaped `${models}`, quoted)."""
    text = PROCESSES["VIRNUCPRO_EMBED"].path.read_text()
    assert re.search(r'def models_path = shellQuoted\("\./\$\{models\.name\}"\)', text), "not ./ and the plain name"
    assert "--models ${models_path}" in text and "--models ${models}" not in text


def test_required_profiles_exist():
    profiles = profile_bodies(CONFIG.read_text())
    assert {"docker", "singularity", "apptainer", "gpu", "slurm", "awsbatch", "google", "test", "test_full"} <= set(profiles)
    assert "includeConfig 'conf/slurm.config'" in profiles["slurm"]
    assert "--gres=gpu:1" in CONFIG_TEXTS[REPO / "conf" / "slurm.config"]
    # EMBED's accelerator request is in conf/base.config's process scope, for --device cuda too: not in
    # the gpu profile, nor in a withLabel block (a profile's replaces conf/base.config's on 24.10)
    assert not re.search(r"accelerator\s*=", profiles["gpu"])
    base = CONFIG_TEXTS[REPO / "conf" / "base.config"]
    assert re.search(r"^    accelerator\s*=", base, re.M)
    assert "accelerator" not in "".join(selector_blocks(base, "withLabel").get("process_gpu", []))
    assert profile_params("gpu") == {"device": "cuda"}
    assert profile_params("test")["tiny_models"] is True and profile_params("test")["device"] == "cpu"


def test_versions_agree():
    manifest = re.search(r"manifest\s*\{[^}]*version\s*=\s*'([^']+)'", CONFIG.read_text()).group(1)
    container = re.search(r"container\s*=\s*'[^':]+:([^']+)'", CONFIG_TEXTS[REPO / "conf" / "base.config"]).group(1)
    assert manifest == __version__ == container


# where the version is written by hand, besides the package, the manifest and the container: a
# release bump that misses one would ship a MultiQC report (or a lint template) of the old version
VERSION_MENTIONS = {
    ".nf-core.yml": r"^\s*version:\s*(\S+)\s*$",
    "assets/multiqc_config.yml": r"virnucpro/virnucpro</a> \(([^)]+)\)",
    "Dockerfile": r"virnucpro:([\w.]+)",
}


@pytest.mark.parametrize("name", sorted(VERSION_MENTIONS))
def test_every_hand_written_version_is_this_checkouts(name):
    found = re.findall(VERSION_MENTIONS[name], (REPO / name).read_text(), flags=re.MULTILINE)
    assert found and set(found) == {__version__}, f"{name} names {sorted(set(found))}, the package {__version__}"


def test_the_release_check_names_every_file_that_holds_the_version():
    """release.yml's error for a development version lists the files to bump: all of them."""
    release = (REPO / ".github" / "workflows" / "release.yml").read_text()
    hint = re.search(r"set the release version \(([^)]*)\)", release).group(1)
    for name in ["virnucpro/__init__.py", "nextflow.config", "conf/base.config", *VERSION_MENTIONS]:
        assert name in hint, name


def test_readme_names_the_image_this_checkout_runs():
    """The README's build and pull commands (run from a clone) name the image conf/base.config runs."""
    image = re.search(r"container\s*=\s*'([^']+)'", CONFIG_TEXTS[REPO / "conf" / "base.config"]).group(1)
    readme = (REPO / "README.md").read_text()
    assert f"docker build -t {image} ." in readme and f"docker://{image}" in readme
    assert f"{image.replace('/', '-').replace(':', '-')}.img" in readme
    assert not [tag for tag in re.findall(r"ghcr\.io/virnucpro/virnucpro:([\w.]+)", readme)
                if tag not in (__version__, "0.1.0")], "an image tag of neither this checkout nor a release"


# --------------------------------------------------------------------------------------------------
# Dockerfile against pyproject.toml
# --------------------------------------------------------------------------------------------------

def _pyproject_dependencies():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(r.name): r.specifier for r in map(Requirement, project["dependencies"])}


def _dockerfile_pins():
    from packaging.utils import canonicalize_name

    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    pins = {}
    for run in re.findall(r"^RUN (.*)$", text, re.M):
        for command in re.split(r"&&|;", run):
            if re.match(r"\s*(python3? -m )?pip3? install\b", command):
                for name, version in re.findall(r"(?<![\w=/.-])([A-Za-z0-9][\w.-]*)==([\w.+!-]+)", command):
                    pins[canonicalize_name(name)] = version
    return pins


def test_dockerfile_pins_every_pyproject_dependency_within_its_range():
    deps, pins = _pyproject_dependencies(), _dockerfile_pins()
    assert set(deps) - set(pins) == set(), "pyproject dependencies the image does not pin"
    assert set(pins) - set(deps) == set(), "the image installs packages pyproject does not declare"
    for name, version in pins.items():
        assert deps[name].contains(version, prereleases=True), f"{name}=={version} outside pyproject's {deps[name]}"


def test_dockerfile_installs_the_package_without_other_versions():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"pip install --no-cache-dir --no-deps /src\s*\\\n\s*&& pip check", text)
    assert re.search(r"^USER \d+", text, re.M), "the image must not run as root"
    copied = re.findall(r"^COPY (.+) /src/", text, re.M)
    assert copied == ["pyproject.toml README.md LICENSE", "virnucpro"]
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and {"!pyproject.toml", "!README.md", "!LICENSE", "!virnucpro/"} <= set(ignore)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, its arguments) of the Dockerfile, continuation lines joined, comments left out."""
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [(m.group(1), m.group(2).strip()) for m in re.finditer(r"^([A-Z]+)\s+(.*)$", joined, re.M)]


def test_the_image_has_what_tasks_need_and_stays_offline():
    """`ps` (Nextflow's task trace), a C compiler (Triton's launchers on a GPU), HF_HUB_OFFLINE=1
    (models come from --models, never from a hub at run time) and the init as PID 1. The stand-in
    base image of CI has `ps` already, so only this check sees procps go."""
    instructions = _dockerfile_instructions()
    installed = {word.split("=")[0] for args in (a for i, a in instructions if i == "RUN" and "apt-get install" in a)
                 for word in args.split("apt-get install", 1)[1].split("&&")[0].split() if not word.startswith("-")}
    assert {"procps", "gcc", "libc6-dev"} <= installed, installed
    environment = " ".join(a for i, a in instructions if i == "ENV").split()
    assert "HF_HUB_OFFLINE=1" in environment, environment
    assert ("ENTRYPOINT", '["/usr/local/bin/container_init.py"]') in instructions


@pytest.mark.parametrize("name", sorted(EXPECTED_PROCESSES))
def test_module_meta_yml_matches_the_module(name):
    yaml = pytest.importorskip("yaml")
    process = PROCESSES[name]
    meta = yaml.safe_load((process.path.parent / "meta.yml").read_text())
    assert meta["name"] == name.lower()

    def keys(entry):  # a channel: one {name: spec} or a tuple of them
        items = entry if isinstance(entry, list) else [entry]
        return [next(iter(item)) for item in items]

    assert [keys(channel) for channel in meta["input"]] == \
        [[n for _q, n, _s in declaration.names] for declaration in process.inputs]
    assert list(meta["output"]) == process.emits


def test_docs_list_every_parameter_and_profile():
    docs = (REPO / "docs" / "usage.md").read_text()
    table_rows = set(re.findall(r"^\| `--(\w+)`", docs, re.M))
    assert table_rows == set(_schema_params()), "docs/usage.md parameter table out of step with the schema"
    for profile in profile_bodies(CONFIG.read_text()):
        assert f"`{profile}`" in docs, f"profile {profile} is not described in docs/usage.md"



def test_summary_says_a_file_name_too_long_is_a_name_not_a_full_disk(tmp_path):
    """A sample name too long for `<sample>.summary.tsv`: exit 3 and "too long", not "free space"."""
    import subprocess
    import sys
    script = REPO / "bin" / "virnucpro_summary.py"
    columns = ["sample", "input_records", "sequences", "chunks", "orfs", "sequences_virus", "sequences_others",
               "sequences_no_orf", "sequences_empty", "chunks_virus", "chunks_others", "chunks_no_orf", "reconciled"]
    row = tmp_path / "s.summary.tsv"
    row.write_text("\t".join(columns) + "\n" + "\t".join(["s"] + ["0"] * 11 + ["yes"]) + "\n")
    long_name = tmp_path / ("x" * 250 + ".summary.tsv")
    done = subprocess.run([sys.executable, str(script), "merge", str(row), "--out", str(long_name),
                           "--mqc", str(tmp_path / "mqc.tsv")], capture_output=True, text=True)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert "file name is too long" in done.stderr and "free space" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, str(script), "merge", str(row), "--out", str(tmp_path / "no" / "t.tsv"),
                           "--mqc", str(tmp_path / "mqc.tsv")], capture_output=True, text=True)
    assert done.returncode == ExitCode.OUTPUT_WRITE and "cannot write" in done.stderr, done.stderr


# --------------------------------------------------------------------------------------------------
# Docs against what Nextflow does with this configuration
# --------------------------------------------------------------------------------------------------

def _shell_commands(text: str, program: str) -> list:
    """Each `program ...` command of the docs' code, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [m.group(0) for m in re.finditer(r"%s [^\n`]*" % re.escape(program), joined)]


def test_docs_pull_the_image_under_the_name_nextflow_looks_for():
    """Nextflow looks in NXF_APPTAINER_CACHEDIR for <image with / and : as ->.img; `apptainer pull
    --dir DIR` writes virnucpro_<tag>.sif there, which Nextflow never finds."""
    image = re.search(r"container\s*=\s*'([^']+)'", CONFIG_TEXTS[REPO / "conf" / "base.config"]).group(1)
    cached = re.sub(r"[/:]", "-", image) + ".img"
    for doc in (REPO / "README.md", REPO / "docs" / "usage.md"):
        pulls = [c for c in _shell_commands(doc.read_text(), "apptainer pull") if f"docker://{image}" in c]
        assert pulls, f"{doc.name} shows no apptainer pull of {image}"
        for pull in pulls:
            assert f'CACHEDIR/{cached}"' in pull and "--dir" not in pull, f"{doc.name}: {pull}"


def test_docs_say_how_profiles_combine_and_gpu_is_declared_after_test():
    """Nextflow 24.10 applies profiles in their order in nextflow.config, not on the command line."""
    order = list(profile_bodies(CONFIG.read_text()))
    assert order.index("gpu") > max(order.index("test"), order.index("test_full"))
    usage = (REPO / "docs" / "usage.md").read_text()
    assert "Later profiles override earlier ones" not in usage
    assert "in the order [nextflow.config](../nextflow.config)\ndeclares them" in usage


def test_docs_name_the_folder_the_download_keeps_the_models_in():
    """storeDir keeps the download's output folder inside --models_store: that inner folder is the
    one a later --models must name."""
    (output,) = PROCESSES["VIRNUCPRO_MODELS_DOWNLOAD"].outputs
    folder = output.paths[0].strip("'\"")
    store = config_params(CONFIG)["models_store"]
    usage = (REPO / "docs" / "usage.md").read_text()
    assert f"`--models {store}/{folder}`" in usage
    assert f"`{store}/{folder}/`" in usage


# --------------------------------------------------------------------------------------------------
# The release workflow
# --------------------------------------------------------------------------------------------------

def _release_version_step(tmp_path: Path, version: str, tag: str = "") -> tuple:
    """The release workflow's version step, run in a checkout at `version` (a manual dispatch when
    `tag` is empty): (exit status, its output, what it gives the later steps)."""
    import subprocess

    import yaml

    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
    (step,) = [s for s in workflow["jobs"]["image"]["steps"] if s.get("id") == "meta"]
    (tmp_path / "virnucpro").mkdir()
    (tmp_path / "virnucpro" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "base.config").write_text(f"process {{\n    container = 'ghcr.io/o/r:{version}'\n}}\n")
    (tmp_path / "nextflow.config").write_text(f"manifest {{\n    version = '{version}'\n}}\n")
    outputs = tmp_path / "outputs"
    outputs.write_text("")
    env = {"PATH": "/usr/bin:/bin", "GITHUB_OUTPUT": str(outputs), "GITHUB_REPOSITORY": "o/r", "RELEASE_TAG": tag}
    done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=30)
    return done.returncode, done.stdout + done.stderr, outputs.read_text()


@pytest.mark.parametrize("version", ["0.2.0dev", "0.2.0.dev3", "1.0.0-dev"])
def test_release_refuses_to_push_a_development_version(tmp_path, version):
    """A manual run from main (version 0.2.0dev) would push that image, and as :latest."""
    status, output, outputs = _release_version_step(tmp_path, version)
    assert status != 0 and "::error::" in output and version in output, output
    assert "version=" not in outputs


def test_release_of_a_version_gives_its_image_names(tmp_path):
    status, output, outputs = _release_version_step(tmp_path, "0.2.0", tag="0.2.0")
    assert status == 0, output
    assert "version=0.2.0\n" in outputs and "image=ghcr.io/o/r\n" in outputs, outputs


def test_a_release_tag_is_the_version_exactly(tmp_path):
    """The docs and the tasks' version-mismatch hint name a release as `-r VERSION`: a tag `v0.2.0`
    would make that a revision that does not exist."""
    status, output, outputs = _release_version_step(tmp_path, "0.2.0", tag="v0.2.0")
    assert status != 0 and "::error::release tag 'v0.2.0'" in output and "version=" not in outputs, output


def test_docs_say_what_the_cloud_executors_do_not_do():
    """A review's cases: --gpu_type was said to choose AWS Batch's GPU (Nextflow 24.10 ignores the
    accelerator type there: the queue's compute environment decides); the default --models_store was
    said to be copied back under AWS/Google Batch (the run fails after the download); the outdir
    checks that object storage skips were promised without exception."""
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    gpu_type = schema["$defs"]["embedding_options"]["properties"]["gpu_type"]["description"]
    usage = (REPO / "docs" / "usage.md").read_text()
    row = re.search(r"^\| `--gpu_type` \|.*$", usage[usage.index("| `--checkpoint_dir`"):], re.M).group(0)
    for text in (gpu_type, row):
        assert "accelerator type on AWS Batch" not in text and "ignored on AWS Batch" in text, text
    cloud = usage[usage.index("## AWS Batch and Google Batch"):usage.index("## Running offline")]
    assert "copied back" not in cloud and "refused at start-up" in cloud
    assert "aws.batch.volumes" in cloud and "--user 0:0" in cloud
    output = (REPO / "docs" / "output.md").read_text()
    for text in (usage, output):
        assert "fresh `--outdir` for every run" in text
