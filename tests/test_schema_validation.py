"""Parameter and samplesheet validation, the summary and --help of subworkflows/local/utils_schema,
run on the real Nextflow engine (scripts/nextflow/nextflow) against the repo's schemas.

Two engine runs in all, to keep the JVM starts few: one driver pipeline that feeds many parameter
maps and samplesheets to the functions (catching each error) and writes the outcomes as JSON; and
one real command line with several bad parameters, which must stop the run before any task.
Without Java or Maven (the launcher resolves Nextflow with it) the tests skip; with CI=true they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nextflow_helpers import (REPO, config_params, java_problem, profile_bodies, profile_params, quick_jvm,
                              skip_unless_ci)

NEXTFLOW = REPO / "scripts" / "nextflow" / "nextflow"
FUNCTIONS = REPO / "subworkflows" / "local" / "utils_schema"
SCHEMA = REPO / "nextflow_schema.json"
SHEET_SCHEMA = REPO / "assets" / "schema_input.json"

DRIVER = """
include { validateParameters; samplesheetToList; paramsSummaryLog; paramsHelp } from '%(functions)s'

// The outcome of one call: its value, or the message of the error it raised.
def attempt(Closure action) {
    try {
        return [ok: true, value: action.call()]
    }
    catch (Exception e) {
        // a call of an included function comes back wrapped by reflection
        return [ok: false, message: (e instanceof java.lang.reflect.InvocationTargetException ? e.cause : e).message]
    }
}

workflow {
    def cases = new groovy.json.JsonSlurper().parse(new File(params.cases))
    def results = [:]
    cases.each { c ->
        if (c.kind == 'params') {
            results[c.name] = attempt { validateParameters(c.params, '%(schema)s'); 'valid' }
        }
        else if (c.kind == 'yaml') { // a -params-file in YAML, read as Nextflow reads it (SnakeYAML)
            results[c.name] = attempt { validateParameters(c.params + new org.yaml.snakeyaml.Yaml().load(c.yaml), '%(schema)s'); 'valid' }
        }
        else if (c.kind == 'sheet') {
            results[c.name] = attempt {
                samplesheetToList(c.sheet, '%(sheet_schema)s').collect { row -> [row[0], row[1].toString()] }
            }
        }
        else if (c.kind == 'help') {
            results[c.name] = attempt { paramsHelp('%(schema)s', c.params, 'nextflow run . --input reads.fa --outdir results') }
        }
        else {
            results[c.name] = attempt { paramsSummaryLog(c.params, '%(schema)s', workflow) }
        }
    }
    new File(params.results).text = groovy.json.JsonOutput.toJson(results)
}
"""

CLI_PIPELINE = """
include { commandLineWords; validateParameters } from '%(functions)s'

process TOUCH {
    output:
    path 'touched'

    script:
    "touch touched"
}

workflow {
    validateParameters(params, '%(schema)s', commandLineWords(workflow.commandLine))
    TOUCH()
}
"""


def _schema_defaults():
    """Every schema parameter with its default (None without one), like the config's params."""
    schema = json.loads(SCHEMA.read_text())
    properties = {}
    for group in schema.get("$defs", {}).values():
        properties.update(group.get("properties", {}))
    properties.update(schema.get("properties", {}))
    return {name: spec.get("default") for name, spec in properties.items()}


def _group_titles(hidden=False):
    schema = json.loads(SCHEMA.read_text())
    return [g["title"] for g in schema["$defs"].values()
            if hidden or any(not p.get("hidden") for p in g["properties"].values())]


def _nextflow(args, cwd: Path):
    """Run the engine in `cwd`; (exit status, stdout + stderr). Skips without Java or Maven."""
    problem = java_problem()
    if problem is None and shutil.which("mvn") is None:
        problem = "no `mvn` on PATH (scripts/nextflow/nextflow resolves Nextflow from Maven Central with it)"
    if problem:
        skip_unless_ci(f"cannot run the Nextflow engine: {problem}")
    # a zone west of UTC: a YAML date printed in the JVM's zone would show the day before
    env = quick_jvm(dict(os.environ, NXF_ANSI_LOG="false", NXF_OFFLINE="true", TZ="America/New_York"))
    proc = subprocess.run([str(NEXTFLOW), "-q", "run", "main.nf", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _paths(tmp: Path):
    """Inputs of the cases: two reads files, a directory, samplesheets (relative paths resolve
    against the launch directory, which is `tmp`)."""
    (tmp / "reads").mkdir()
    (tmp / "reads" / "p1.fa").write_text(">a\nACGT\n")
    (tmp / "reads" / "p2.fa").write_text(">b\nACGT\n")
    (tmp / "reads" / 'odd "name", 3.fa').write_text(">c\nACGT\n")
    (tmp / "empty").mkdir()
    (tmp / "empty" / "e.fa").write_bytes(b"")  # 0 bytes: no sequences
    sheets = {
        # a blank line, CRLF, spaces around quoted fields, a quoted separator and doubled quotes
        "good.csv": ('"sample",file\r\npatient1,reads/p1.fa\r\n\r\n "patient2" , "%s"\r\n'
                     'patient3,"reads/odd ""name"", 3.fa"' % (tmp / "reads" / "p2.fa")),
        "good.yml": "- sample: patient1\n  file: reads/p1.fa\n",
        "bad_name.csv": "sample,file\npatient1,reads/p1.fa\n\"bad name/1\",reads/p2.fa\n",
        "missing_file.tsv": "sample\tfile\npatient1\treads/p1.fa\npatient2\treads/missing.fa\n",
        "several.csv": "sample,file\n,reads/p1.fa\nok,reads\n",
        # <sample>.summary.tsv would pass the file system's 255 characters a name
        "long_name.csv": "sample,file\n%s,reads/p1.fa\n%s,reads/p2.fa\n" % ("x" * 200, "y" * 201),
        "empty.csv": "sample,file\n",
        # YAML 1.1 reads 010 as 8 and 1.10 as 1.1; JSON 10 is a number: a sample renamed, or merged
        "numbers.yml": ("- sample: 010\n  file: reads/p1.fa\n- sample: 1.10\n  file: reads/p2.fa\n"
                        "- sample: yes\n  file: reads/p1.fa\n- sample: ok\n  file: 12\n- sample: 2024-01-31\n  file: reads/p1.fa\n"),
        "numbers.json": '[{"sample": 10, "file": "reads/p1.fa"}, {"sample": "11", "file": "reads/p2.fa"}]',
        "quoted_numbers.yml": '- sample: "010"\n  file: reads/p1.fa\n- sample: "1.10"\n  file: reads/p2.fa\n',
        "repeated_column.csv": "sample,file,file\npatient1,reads/p1.fa,reads/p2.fa\n",
        # trailing separators (a spreadsheet export) give empty column names: not a repeated column
        "trailing_separators.csv": "sample,file,,\npatient1,reads/p1.fa,,\n",
        "empty_file.csv": "sample,file\npatient1,reads/p1.fa\npatient2,empty/e.fa\n",
        "cr_only.csv": "sample,file\rpatient1,reads/p1.fa\rpatient2,reads/p2.fa\r",
        # one lone CR among CRLF line ends joins two rows; a CR inside quotes is the field's own
        "cr_mixed.csv": "sample,file\r\npatient1,reads/p1.fa\rpatient2,reads/p2.fa\r\n",
        "cr_in_quotes.csv": 'sample,file,note\r\npatient1,reads/p1.fa,"a\rb"\r\n',
        # a spreadsheet's trailing row of separators is no row; text after a closing quote is refused
        "empty_rows.csv": 'sample,file\n,\npatient1,reads/p1.fa\n , \n,\n',
        "text_after_quote.csv": 'sample,file\n"patient1"x,reads/p1.fa\n',
        "text_after_quote_header.csv": '"sample"s,file\npatient1,reads/p1.fa\n',
        "blank_after_quote.csv": 'sample,file\n"patient1" ,reads/p1.fa\n',
        "quoted_empty_row.csv": 'sample,file\npatient1,reads/p1.fa\n"",\n',
        # a column the schema does not know is ignored (with a warning), repeated or not
        "repeated_unknown_column.csv": "sample,file,note,note\npatient1,reads/p1.fa,a,b\n",
        "tilde.csv": "sample,file\npatient1,~/no_such_reads.fa\n",
        # a YAML literal block keeps its line break; a quoted CSV cell its blank
        "literal_block.yml": "- sample: patient1\n  file: |\n    reads/p1.fa\n",
        "literal_sample.yml": "- sample: |\n    patient1\n  file: reads/p1.fa\n",
        "quoted_blank.csv": 'sample,file\npatient1,"reads/p1.fa "\n',
        # YAML 1.1 reads 12:30 as the number 750 (base 60)
        "clock.yml": "- sample: 12:30\n  file: reads/p1.fa\n",
        # a key repeated in a row: the last one won, the first file dropped unseen
        "repeated_key.yml": "- sample: patient1\n  file: reads/p1.fa\n  file: reads/p2.fa\n",
        "repeated_key.json": '[{"sample": "patient1", "file": "reads/p1.fa", "file": "reads/p2.fa"}]',
        "good.json": '[{"sample": "patient1", "file": "reads/p1.fa"},\t{"sample": "patient2", "file": "reads/p2.fa"}]',
        # a FIFO's PREPARE waited for a writer for ever; /dev/null is no file of reads either
        "fifo.csv": "sample,file\npatient1,%s\npatient2,/dev/null\n" % (tmp / "fifo" / "pipe.fa"),
    }
    (tmp / "fifo").mkdir()
    os.mkfifo(tmp / "fifo" / "pipe.fa")
    for name, text in sheets.items():
        (tmp / name).write_text(text)
    return sheets


NON_FINITE_YAML = [".nan", ".inf", "-.inf", "1e400"]  # YAML's not-a-number and infinities; 1e400 overflows a double


def _cases(tmp: Path):
    base = dict(_schema_defaults(), input=str(tmp / "reads" / "p1.fa"), outdir=str(tmp / "results"))
    (tmp / "my models").mkdir(exist_ok=True)
    (tmp / "my models" / "500_model.pth").write_bytes(b"")  # only its name and existence are checked here
    (tmp / "my models" / "mine.safetensors").write_bytes(b"")  # a state_dict, as `virnucpro predict` takes
    params = {
        "good": {},
        "good_types": {"threshold": 1, "chunk_size": "300", "tiny_models": True, "help": "chunk_size",
                       "input": "reads/*.fa", "models": str(tmp / "reads")},
        "enum": {"precision": "fp8"},
        "chunk_size_without_classifier": {"chunk_size": 400},  # the original classifiers: 300 and 500 only
        "unknown": {"chunksize": 300},
        "kebab_twins": {"chunk-size": 300, "chunkSize": 300},
        "nf_core_caps": {"max_memory": "100GB", "max-time": "48.h", "maxTime": "48.h", "max_cpus": "many"},
        "not_a_number": {"threshold": "abc"},
        "over_maximum": {"threshold": 1.5},
        "not_an_integer": {"shard_size": "abc"},
        # passed on as written: the CLI would get `--chunk-size 500.0`
        "decimal_integer": {"chunk_size": 500.0},
        # a params file's "false" stays a string, which Groovy reads as true: refused, not converted
        "quoted_boolean": {"compile": "false"},
        "required": {"input": None},
        "no_such_input": {"input": str(tmp / "reads" / "*.fq")},
        "dir_is_file": {"models": str(tmp / "reads" / "p1.fa")},
        "empty_input": {"input": str(tmp / "empty" / "e.fa")},
        "empty_input_glob": {"input": "empty/*.fa"},
        "relative_missing": {"models": "no/such/models"},
        "several": {"precision": "fp8", "chunksize": 300, "threshold": "abc", "shard_size": 0, "outdir": True},
        # what reaches a shell: the SLURM job header (one option a line: a line break starts a
        # command) and MODELS_DOWNLOAD's script
        "slurm_lines": {"slurm_account": "acct\nid > /tmp/pwned", "slurm_options": "--comment=x\ntouch /tmp/pwned",
                        "slurm_qos": "normal\t#", "slurm_queue": "cpu\n", "slurm_gpu_queue": "gpu one",
                        "gpu_type": "a100\r"},
        "mirror_shell": {"models_mirror": "https://mirror.example.org/$(touch /tmp/pwned)"},
        "mirror_line": {"models_mirror": "https://mirror.example.org/models\n"},
        # `virnucpro models download --mirror` takes http(s) only: refused before the download task
        "mirror_file": {"models_mirror": "file:///shared/mirror"},
        "site_values": {"slurm_account": "proj-1_x", "slurm_qos": "normal", "slurm_queue": "short,long",
                        "slurm_gpu_queue": "gpu", "gpu_type": "nvidia-l4", "slurm_options": "--constraint=a100 --exclusive",
                        "models_mirror": "https://mirror.example.org:8443/virnucpro/models%20v1/",
                        "classifier": str(tmp / "my models" / "500_model.pth")},  # a space: Nextflow escapes it
        "safetensors_classifier": {"classifier": str(tmp / "my models" / "mine.safetensors")},
    }
    params.update({
        # a params file's `threshold:` left blank: null, which would reach the tasks as `--threshold null`
        "blank_defaults": {"threshold": None, "chunk_size": "", "precision": None, "compile": None,
                           "validate_params": None},
        # parameters without a default take null as unset
        "null_without_default": {"models": None, "classifier": None, "tiny_models": None, "token_budget": None,
                                 "checkpoint_dir": None, "gpu_type": None},
        "tilde_input": {"input": "~/no_such_reads_*.fa"},
        "tilde_outdir": {"outdir": "~/no_such_results"},
        # Nextflow makes <outdir>/pipeline_info before validation: by then `~/res` exists (_tilde_paths)
        "tilde_outdir_exists": {"outdir": "~/res"},
        "tilde_input_exists": {"input": "~/reads_*.fa"},
        "tilde_input_file_exists": {"input": "~/reads_1.fa"},
        "blank_outdir": {"outdir": str(tmp / "results") + " "},
        # passed on as written: `--shard-size 8` then a line break split the task's command line, and
        # a retry's arithmetic on a token budget of '+100' stopped the run
        "blank_integer": {"shard_size": "8\n"},
        "plus_integer": {"token_budget": "+100"},
        "plus_number": {"threshold": " 0.5"},
        # a text parameter as a number, not typed so on the command line: the text was changed
        "number_for_text": {"slurm_account": 34},
    })
    _tilde_paths(tmp)
    cases = [{"kind": "params", "name": name, "params": dict(base, **extra)} for name, extra in params.items()]
    cases += _profile_cases(tmp)
    cases += [{"kind": "yaml", "name": f"yaml_{value}", "params": base, "yaml": f"threshold: {value}\ntoken_budget: -5\n"}
              for value in NON_FINITE_YAML]
    cases += [{"kind": "sheet", "name": name, "sheet": name} for name in [*_paths(tmp), "tilde_exists.csv"]]
    cases += [
        {"kind": "sheet", "name": "tilde_sheet_exists", "sheet": "~/sheet.csv"},
        {"kind": "help", "name": "help", "params": {"help": True}},
        {"kind": "help", "name": "help_hidden", "params": {"help": True, "show_hidden": True}},
        {"kind": "help", "name": "help_param", "params": {"help": "shard-size"}},
        {"kind": "help", "name": "help_unknown", "params": {"help": "shard-sise"}},
        {"kind": "help", "name": "help_full", "params": {"help_full": True}},
        {"kind": "summary", "name": "summary", "params": dict(base, precision="fp16", save_embeddings=True)},
    ]
    return cases


def _tilde_paths(tmp: Path):
    """A folder named `~` in the launch directory, as a run with `outdir: "~/res"` leaves it (Nextflow
    makes ~/res/pipeline_info before validation), with a reads file and a samplesheet in it: each
    `~/...` path then exists, and must still be refused."""
    home = tmp / "~"
    (home / "res" / "pipeline_info").mkdir(parents=True)
    (home / "reads_1.fa").write_text(">a\nACGT\n")
    (home / "sheet.csv").write_text("sample,file\npatient1,reads/p1.fa\n")
    (tmp / "tilde_exists.csv").write_text("sample,file\npatient1,~/reads_1.fa\n")


def _profile_cases(tmp: Path):
    """The params of nextflow.config under each of its profiles (input and outdir given where unset):
    none of the values the pipeline sets itself may be refused."""
    config = REPO / "nextflow.config"
    cases = []
    for profile in profile_bodies(config.read_text()):
        values = dict(config_params(config), **profile_params(profile))
        values["input"] = values["input"] or str(tmp / "reads" / "p1.fa")
        values["outdir"] = values["outdir"] or str(tmp / "results")
        cases.append({"kind": "params", "name": f"profile_{profile}", "params": values})
    return cases


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schema_driver")
    (tmp / "cases.json").write_text(json.dumps(_cases(tmp)))
    (tmp / "main.nf").write_text(DRIVER % {"functions": FUNCTIONS, "schema": SCHEMA, "sheet_schema": SHEET_SCHEMA})
    status, output = _nextflow(["--cases", str(tmp / "cases.json"), "--results", str(tmp / "results.json")], tmp)
    assert status == 0, output
    return {"tmp": tmp, **json.loads((tmp / "results.json").read_text())}


def _refused(results, name):
    outcome = results[name]
    assert not outcome["ok"], f"{name} was accepted: {outcome}"
    return outcome["message"]


@pytest.mark.parametrize("name", ["good", "good_types", "site_values", "safetensors_classifier"])
def test_valid_parameters_pass(results, name):
    assert results[name] == {"ok": True, "value": "valid"}


@pytest.mark.parametrize("value", NON_FINITE_YAML)
def test_a_number_no_parameter_can_take_in_a_params_file_is_named_with_the_other_problems(results, value):
    """A reviewer's case: `threshold: .nan` stopped validation with a Java error naming no parameter
    (BigDecimal of NaN), and hid the file's other problems."""
    message = _refused(results, f"yaml_{value}")
    assert "* --threshold:" in message and "is not a number" in message and "* --token_budget:" in message, message
    assert "(2 problems" in message, message


@pytest.mark.parametrize("name, expected", [
    ("enum", ["* --precision: 'fp8' is not one of auto, fp32, fp16, bf16"]),
    ("chunk_size_without_classifier", ["* --chunk_size: 400 is not one of 300, 500"]),
    ("unknown", ["* --chunksize: not a parameter of this pipeline (did you mean --chunk_size?)"]),
    ("not_a_number", ["* --threshold: 'abc' is not a number"]),
    ("over_maximum", ["* --threshold: 1.5 is greater than the maximum 1"]),
    ("not_an_integer", ["* --shard_size: 'abc' is not an integer"]),
    ("decimal_integer", ["* --chunk_size: 500.0 is not an integer"]),
    ("blank_integer", ["* --shard_size: '8\\n' is not an integer"]),
    ("plus_integer", ["* --token_budget: '+100' is not an integer"]),
    ("plus_number", ["* --threshold: ' 0.5' is not a number"]),
    ("number_for_text", ["* --slurm_account: 34 is a number, not text", "quote it"]),
    ("quoted_boolean", ["* --compile: 'false' is a quoted string, not a boolean: write false without quotes"]),
    ("required", ["* --input: required"]),
    ("no_such_input", ["* --input: no file matches", "*.fq"]),
    ("dir_is_file", ["* --models:", "is a file, not a directory"]),
    ("empty_input", ["* --input:", "e.fa' is empty (0 bytes): an empty file holds no sequences"]),
    ("empty_input_glob", ["* --input:", "e.fa' (matched by 'empty/*.fa') is empty (0 bytes)", "narrow the pattern"]),
    ("relative_missing", ["* --models: 'no/such/models' does not exist", "resolved against the launch directory"]),
])
def test_each_problem_names_the_parameter(results, name, expected):
    message = _refused(results, name)
    for text in expected:
        assert text in message, message
    assert "(1 problem;" in message, message


def test_line_breaks_and_shell_syntax_in_values_that_reach_a_shell_are_refused(results):
    """A line break in a SLURM value would end its `#SBATCH` line and start a command of the job
    script; the models mirror is written into MODELS_DOWNLOAD's script."""
    message = _refused(results, "slurm_lines")
    for name in ("slurm_account", "slurm_options", "slurm_qos", "slurm_queue", "slurm_gpu_queue", "gpu_type"):
        assert f"* --{name}:" in message, message
    assert "(6 problems;" in message, message
    # said in words, not as the pattern's regular expression (an HPC review's case)
    assert "* --slurm_gpu_queue: 'gpu one' must be one word: no spaces, quotes, '#', '\\' or control characters" in message
    assert "* --slurm_options: '--comment=x\\ntouch /tmp/pwned' may hold no line breaks" in message, message
    assert "does not match the pattern" not in message
    for name in ("mirror_shell", "mirror_line", "mirror_file"):
        assert "* --models_mirror:" in _refused(results, name)


def test_nf_core_s_retired_resource_caps_point_to_resource_limits(results):
    """An HPC review's case: --max_memory 64.GB, an nf-core habit, got only "not a parameter"."""
    message = _refused(results, "nf_core_caps")
    assert "* --max_memory: not a parameter of this pipeline; caps on the tasks' requests are set with " \
           "process.resourceLimits in a config file given with -c: `process.resourceLimits = [memory: 100.GB]`" \
        in message, message  # the value given, as a config file writes it
    assert "* --max-time: not a parameter of this pipeline; caps" in message and "[time: 48.h]" in message
    assert "[cpus: 32]" in message  # a value that reads as no number: an example
    assert "(3 problems;" in message and "did you mean" not in message, message


def test_kebab_and_camel_twins_are_reported_once(results):
    message = _refused(results, "kebab_twins")
    assert "* --chunk-size: not a parameter of this pipeline (did you mean --chunk_size?)" in message
    assert "chunkSize" not in message and "(1 problem;" in message, message


def test_every_problem_is_reported_at_once(results):
    message = _refused(results, "several")
    problems = [line for line in message.splitlines() if line.startswith("* --")]
    assert len(problems) == 5, message
    for name in ("--precision", "--chunksize", "--threshold", "--shard_size", "--outdir: expected a string, but found true (what a lone --option"):
        assert any(name in line for line in problems), message


def test_good_samplesheets_give_meta_and_files(results):
    tmp = results["tmp"]
    assert results["good.csv"] == {"ok": True, "value": [
        [{"id": "patient1"}, str(tmp / "reads" / "p1.fa")],  # relative: against the launch directory
        [{"id": "patient2"}, str(tmp / "reads" / "p2.fa")],
        [{"id": "patient3"}, str(tmp / "reads" / 'odd "name", 3.fa')],
    ]}
    assert results["good.yml"] == {"ok": True, "value": [[{"id": "patient1"}, str(tmp / "reads" / "p1.fa")]]}


@pytest.mark.parametrize("sheet, expected", [
    ("bad_name.csv", ["* row 2, column sample: sample must be given and may hold only", "bad name/1"]),
    # <sample>.summary.tsv would pass the file system's 255 characters a name
    ("long_name.csv", ["* row 2, column sample: sample must be given and may hold only", "at most 200",
                       "is longer than 200 characters"]),
    # Java's `$` also matches before a last line break; a schema pattern's `$` ends the text
    ("literal_sample.yml", ["* row 1, column sample: sample must be given", "'patient1\\n' does not match the pattern"]),
    ("empty_file.csv", ["* row 2, column file:", "empty/e.fa' is empty (0 bytes)", "an empty file holds no sequences",
                        "remove the row"]),
], ids=["bad-name", "too-long", "line-break", "empty-file"])
def test_a_bad_cell_is_one_problem_naming_its_row(results, sheet, expected):
    message = _refused(results, sheet)
    for text in expected:
        assert text in message, message
    assert "(1 problem)" in message, message
    if "row 2" in expected[0]:
        assert "row 1" not in message, message


def test_missing_file_is_refused(results):
    message = _refused(results, "missing_file.tsv")
    assert "* row 2, column file: file must be an existing FASTA or FASTQ file" in message, message
    assert "reads/missing.fa" in message and "(1 problem)" in message, message


def test_a_relative_missing_file_names_the_launch_directory(results):
    message = _refused(results, "missing_file.tsv")
    assert f"resolved against the launch directory, {results['tmp']}" in message, message
    assert "resolved against the launch directory" in _refused(results, "relative_missing")


def test_numbers_read_from_yaml_or_json_are_refused_not_renamed(results):
    """YAML 1.1 reads an unquoted 010 as 8 and 1.10 as 1.1 (merging it with a sample 1.1): the
    sheet is refused, naming the row, rather than run with other sample names."""
    message = _refused(results, "numbers.yml")
    assert "* row 1, column sample:" in message and "read as the number 8, not as text" in message, message
    assert "* row 2, column sample:" in message and "read as the number 1.1, not as text" in message, message
    assert "* row 3, column sample:" in message and "read as the boolean true" in message, message
    assert "* row 4, column file:" in message and "read as the number 12" in message, message
    # the date as YAML read it (UTC), whatever the JVM's zone (the driver runs in New York's)
    assert "* row 5, column sample:" in message and "read as the date 2024-01-31, not as text" in message, message
    assert 'quote it as you wrote it (sample: "...")' in message and "(5 problems)" in message, message
    assert "may hold only letters" not in message, "the pattern's message does not apply:\n" + message
    message = _refused(results, "numbers.json")
    assert "* row 1, column sample:" in message and "read as the number 10" in message, message
    assert "row 2" not in message and "(1 problem)" in message, message


def test_the_quoting_hint_claims_no_value_the_user_did_not_write(results):
    """`sample: 12:30` reads as 750: the hint shows where the quotes go, not an invented `010`."""
    message = _refused(results, "clock.yml")
    assert "* row 1, column sample: read as the number 750, not as text" in message, message
    assert 'quote it as you wrote it (sample: "...")' in message and "010" not in message, message


def test_quoted_numbers_in_yaml_are_kept_as_written(results):
    tmp = results["tmp"]
    assert results["quoted_numbers.yml"] == {"ok": True, "value": [
        [{"id": "010"}, str(tmp / "reads" / "p1.fa")], [{"id": "1.10"}, str(tmp / "reads" / "p2.fa")]]}


def test_a_column_named_twice_in_the_header_is_refused(results):
    message = _refused(results, "repeated_column.csv")
    assert "* column file: named 2 times in the header (sample, file, file)" in message, message
    assert "(1 problem)" in message, message
    tmp = results["tmp"]
    assert results["trailing_separators.csv"] == {"ok": True, "value": [[{"id": "patient1"}, str(tmp / "reads" / "p1.fa")]]}


def test_a_repeated_column_the_schema_does_not_know_is_not_refused(results):
    assert results["repeated_unknown_column.csv"] == {"ok": True, "value": [
        [{"id": "patient1"}, str(results["tmp"] / "reads" / "p1.fa")]]}


def test_a_blank_or_null_parameter_with_a_default_is_refused_naming_the_default(results):
    """A params file's `threshold:` is null: passed on, the task would get `--threshold null`."""
    message = _refused(results, "blank_defaults")
    for name, default in [("threshold", "0.5"), ("chunk_size", "500"), ("precision", "'auto'"),
                          ("compile", "true"), ("validate_params", "true")]:
        assert (f"* --{name}: given without a value (blank or null); leave it out to get the default {default}"
                in message), message
    assert "(5 problems;" in message, message


@pytest.mark.parametrize("name", ["null_without_default"] + [f"profile_{p}" for p in profile_bodies(
    (REPO / "nextflow.config").read_text())])
def test_null_is_unset_where_there_is_no_default_and_every_profile_passes(results, name):
    assert results[name] == {"ok": True, "value": "valid"}


@pytest.mark.parametrize("name, expected", [
    ("tilde_input", ["* --input: no file matches '~/no_such_reads_*.fa': '~' is not expanded"]),
    # not there yet, it would be made as a folder named '~' in the launch directory
    ("tilde_outdir", ["* --outdir: '~/no_such_results': '~' is not expanded"]),
    ("tilde.csv", ["* row 1, column file:", "'~/no_such_reads.fa' does not exist: '~' is not expanded"]),
    # there (a folder named '~' in the launch directory), and refused all the same
    ("tilde_outdir_exists", ["* --outdir: '~/res': '~' is not expanded"]),
    ("tilde_input_exists", ["* --input: '~/reads_*.fa': '~' is not expanded"]),
    ("tilde_input_file_exists", ["* --input: '~/reads_1.fa': '~' is not expanded"]),
    ("tilde_exists.csv", ["* row 1, column file:", "('~/reads_1.fa': '~' is not expanded"]),
])
def test_a_tilde_path_is_said_not_to_be_expanded(results, name, expected):
    message = _refused(results, name)
    for text in expected + ["give the full path", "(1 problem"]:
        assert text in message, message
    assert len([line for line in message.splitlines() if line.startswith("* ")]) == 1, message
    if name.endswith("exists") or name == "tilde_exists.csv":  # there: not said to be missing
        assert "does not exist" not in message and "no file matches" not in message, message


def test_an_existing_samplesheet_under_tilde_is_refused(results):
    """`--input ~/sheet.csv` from a params file names <launch dir>/~/sheet.csv, not the home one."""
    message = _refused(results, "tilde_sheet_exists")
    assert message.startswith("Samplesheet ~/sheet.csv: '~' is not expanded") and "give the full path" in message, message
    assert "\n" not in message, message


@pytest.mark.parametrize("name, expected", [
    ("literal_block.yml", "* row 1, column file: file must be an existing FASTA or FASTQ file (plain, gzip, bzip2 or xz) "
                          "('reads/p1.fa\\n' ends with a blank or line break: remove it)"),
    ("quoted_blank.csv", "* row 1, column file: file must be an existing FASTA or FASTQ file (plain, gzip, bzip2 or xz) "
                         "('reads/p1.fa ' ends with a blank or line break: remove it)"),
    ("blank_outdir", "* --outdir: '%s ' ends with a blank or line break: remove it"),
])
def test_a_path_ending_in_a_blank_or_line_break_is_a_problem_of_its_row(results, name, expected):
    """Nextflow's file() refuses such a path with an error that names neither sheet nor row."""
    message = _refused(results, name)
    assert expected.replace("%s", str(results["tmp"] / "results")) in message, message
    assert "(1 problem" in message and "Path string" not in message, message


@pytest.mark.parametrize("name", ["cr_only.csv", "cr_mixed.csv"])
def test_lone_cr_line_ends_are_named(results, name):
    """All line ends CR, or one among CRLF: either joins lines into one row."""
    message = _refused(results, name)
    assert f"Samplesheet {name}: some or all of its line ends are a CR alone" in message, message
    assert "save it with LF or CRLF line ends" in message, message


def test_a_cr_inside_quotes_is_part_of_the_field(results):
    assert results["cr_in_quotes.csv"] == {"ok": True, "value": [[{"id": "patient1"}, str(results["tmp"] / "reads" / "p1.fa")]]}


@pytest.mark.parametrize("name", ["empty_rows.csv", "blank_after_quote.csv"])
def test_rows_of_empty_fields_are_skipped_and_blanks_after_a_quote_are_no_text(results, name):
    """A review's case: a spreadsheet's trailing `,` row was refused as a row whose cells are empty."""
    assert results[name] == {"ok": True, "value": [[{"id": "patient1"}, str(results["tmp"] / "reads" / "p1.fa")]]}


def test_a_quoted_empty_field_keeps_its_row(results):
    """Quotes say the row was written: its empty sample is a problem of that row, not skipped."""
    assert "* row 2, column sample:" in _refused(results, "quoted_empty_row.csv")


@pytest.mark.parametrize("name, where, seen", [("text_after_quote.csv", "row 1", '"patient1"x'),
                                               ("text_after_quote_header.csv", "its header", '"sample"s')])
def test_text_after_a_closing_quote_is_refused(results, name, where, seen):
    """A review's case: `"s01"x` was read as the sample s01x without a word."""
    message = _refused(results, name)
    assert message == (f"Samplesheet {name}: in {where}, text follows a closing quote ({seen}...), which would be "
                       "joined to the field unseen; put the whole field inside the quotes, or remove them"), message


def test_every_bad_row_is_reported_at_once(results):
    message = _refused(results, "several.csv")
    assert "* row 1, column sample:" in message and "* row 2, column file:" in message, message
    assert "is a directory, not a file" in message, message


def test_empty_samplesheet_is_refused(results):
    assert "0 rows, at least 1 needed" in _refused(results, "empty.csv")


def test_help_lists_the_groups(results):
    text = results["help"]["value"]
    for title in _group_titles():
        assert title in text, text
    assert "--input" in text and "--chunk_size" in text and "--publish_dir_mode" not in text, text
    assert "--publish_dir_mode" in results["help_hidden"]["value"]
    assert results["help_full"]["value"].count("type     :") >= 10


def test_help_for_one_parameter_gives_its_help_text(results):
    text = results["help_param"]["value"]
    assert text.startswith("--shard_size") and "fewer model loads" in text and "minimum  : 1" in text, text


def test_help_for_an_unknown_parameter_is_an_error_naming_the_closest(results):
    message = _refused(results, "help_unknown")
    assert "--help shard-sise: no such parameter (did you mean --shard_size?)" in message, message


def test_summary_shows_changed_parameters_by_group(results):
    text = results["summary"]["value"]
    assert "Core Nextflow options" in text and "runName" in text and "containerEngine" in text, text
    assert "Embedding options" in text and "precision       : fp16" in text, text
    assert "Preparation options" not in text, "unchanged groups are left out:\n" + text
    assert "null" not in text and "tiny_models" not in text, "unset parameters are left out:\n" + text


def test_command_line_errors_stop_the_run_before_any_task(tmp_path):
    (tmp_path / "reads.fa").write_text(">a\nACGT\n")
    (tmp_path / "main.nf").write_text(CLI_PIPELINE % {"functions": FUNCTIONS, "schema": SCHEMA})
    status, output = _nextflow(["--input", "reads.fa", "--outdir", "results", "--precision", "fp8",
                                "--chunksize", "300", "--threshold", "abc", "--shard_size", "10"], tmp_path)
    assert status != 0, output
    assert "Invalid parameters (3 problems; see --help)" in output, output
    assert "* --precision: 'fp8' is not one of" in output, output
    assert "* --chunksize: not a parameter of this pipeline (did you mean --chunk_size?)" in output, output
    assert "* --threshold: 'abc' is not a number" in output, output
    tasks = [p for p in (tmp_path / "work").glob("*/*")] if (tmp_path / "work").exists() else []
    assert not tasks, f"a task started: {tasks}"


@pytest.mark.parametrize("params_file, text", [
    ("p.yml", "shard_size: 10\nthreshold: 0.5\nshard_size: 20\n"),
    ("p.json", '{"shard_size": 10, "threshold": 0.5, "shard_size": 20}'),
])
def test_a_parameter_given_twice_or_a_number_nextflow_changed_stops_the_run(tmp_path, params_file, text):
    """Nextflow keeps the last of a repeated --input (the records of the first were in no output, and
    the run said every read reconciled) and of a params file's repeated key; it reads `--outdir 010`
    as 10 (the results went to 10/). `--google_project 123` reads back as typed: kept."""
    for name in ("a.fa", "b.fa"):
        (tmp_path / name).write_text(">a\nACGT\n")
    (tmp_path / params_file).write_text(text)
    (tmp_path / "main.nf").write_text(CLI_PIPELINE % {"functions": FUNCTIONS, "schema": SCHEMA})
    status, output = _nextflow(["--input", "a.fa", "--input", "b.fa", "--outdir", "010", "--google_project", "123",
                                "--chunk_size", "300", "--chunk_size=300", "--token_budget", "99999999999999999999",
                                "--threshold", "0.50", "-params-file", params_file], tmp_path)
    assert status != 0 and "Invalid parameters (5 problems; see --help)" in output, output
    assert "* --token_budget: 99999999999999999999 is greater than the maximum" in output, output
    assert "* --input: given 2 times ('a.fa', 'b.fa'), and Nextflow keeps only the last: the records of the " \
           "others would be missing" in output, output
    assert "* --chunk_size: given 2 times ('300', '300')" in output, output
    assert f"* -params-file {params_file}: found duplicate key shard_size" in output, output
    assert "* --outdir: Nextflow reads '010' on the command line as the number 10" in output, output
    assert "google_project" not in output.split("Invalid parameters")[1], output
    assert not (tmp_path / "work").exists() or not list((tmp_path / "work").glob("*/*")), "a task started"


@pytest.mark.parametrize("sheet", ["repeated_key.yml", "repeated_key.json"])
def test_a_key_repeated_in_a_yaml_or_json_row_is_refused(results, sheet):
    """`file:` twice in a row kept only the second file, and the summary said every read reconciled."""
    message = _refused(results, sheet)
    assert "cannot be read" in message and "duplicate key file" in message, message


def test_a_json_sheet_yaml_cannot_read_is_read_as_json(results):
    """A tab between values is JSON's whitespace but no YAML 1.1 token: the repeat check leaves it be."""
    tmp = results["tmp"]
    assert results["good.json"] == {"ok": True, "value": [[{"id": "patient1"}, str(tmp / "reads" / "p1.fa")],
                                                          [{"id": "patient2"}, str(tmp / "reads" / "p2.fa")]]}


def test_a_fifo_or_device_in_a_sheet_is_refused_at_start_up(results):
    message = _refused(results, "fifo.csv")
    assert f"'{results['tmp'] / 'fifo' / 'pipe.fa'}' is neither a file nor a directory" in message, message
    assert "'/dev/null' is neither a file nor a directory" in message and "(2 problems)" in message, message


def test_a_command_line_inherited_from_another_launch_is_not_read_as_this_ones(tmp_path, monkeypatch):
    """Nextflow builds workflow.commandLine from NXF_CLI: one left by another launch (a task of a pipeline
    that runs this one) made its --input count as a second one here. The launcher sets it afresh."""
    (tmp_path / "a.fa").write_text(">a\nACGT\n")
    (tmp_path / "main.nf").write_text(CLI_PIPELINE % {"functions": FUNCTIONS, "schema": SCHEMA})
    monkeypatch.setenv("NXF_CLI", "nextflow run other.nf --input elsewhere.fa --outdir elsewhere")
    status, output = _nextflow(["--input", "a.fa", "--outdir", "results", "--precision", "fp8"], tmp_path)
    assert status != 0 and "Invalid parameters (1 problem; see --help)" in output, output
    assert "given 2 times" not in output and "* --precision: 'fp8' is not one of" in output, output
