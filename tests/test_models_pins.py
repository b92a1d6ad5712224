"""The model store as a package (issue 9, points 15 and 17): every published file pinned in the
code (`pins`, read by both `download` and `store`), the modules import without a circle, and their
functions stay short."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro.models import pins

PACKAGE = Path(pins.__file__).parent
MODULES = ("pins", "store", "download", "tiny")
HEX64 = re.compile(r"[0-9a-f]{64}")
HEX40 = re.compile(r"[0-9a-f]{40}")

#: The values found in public sources (see the issue-9 note): a change here is a change of models.
EXPECTED_PINS = {
    "esm2_t36_3B_UR50D.pt": "7de8b4082ba15891959ab368b77ce3886697af1efb16d3c9e9e7b0c5d3f07500",
    "esm2_t36_3B_UR50D-contact-regression.pt":
        "4da500eab246481dc9c8c95bc7b1d02f2803d761c380b0e95186d4a07d0fc84e",
    "DNABERT-S/config.json": "d54c142114563aa34ef7c2b54ccc921d08e50cd7c3cd69c439d5e0d2bbcfcdee",
    "DNABERT-S/pytorch_model.bin": "f3cfc3d0541859df64759e758cc4bc40fe1d5760799a7d098a9f9f09501c1e5f",
    "DNABERT-S/tokenizer.json": "667f5a0e6e9630f7052b004784dda7c7aeba395cc4ca3c01b11b02e6aa29d7b1",
    "DNABERT-S/tokenizer_config.json": "f13dbe9968de35aff25b06965f18e30449ec37ed94811bd0c7f97990f3b18ebb",
    "DNABERT-S/special_tokens_map.json": "b6d346be366a7d1d48332dbc9fdf3bf8960b5d879522b7799ddba59e76237ee3",
    "300_model.pth": "a0b5b85e7c1e44f00cde146d091beb82b2c8e855",
    "500_model.pth": "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d",
}


def _all_files():
    return [spec for source in pins.SOURCES.values() for spec in source.files]


def test_every_downloaded_file_is_pinned_by_content():
    """sha256 for every ESM-2 and DNABERT-S file; the classifiers' git blob ids at a fixed commit."""
    pins = {}
    for spec in _all_files():
        assert spec.sha256 or spec.git_sha1, f"{spec.relpath} has no pin"
        if spec.relpath.endswith(".pth"):
            assert spec.git_sha1 and HEX40.fullmatch(spec.git_sha1), spec.relpath
            pins[spec.relpath] = spec.git_sha1
        else:
            assert spec.sha256 and HEX64.fullmatch(spec.sha256), spec.relpath
            pins[spec.relpath] = spec.sha256
    assert pins == EXPECTED_PINS


def test_pins_are_for_fixed_revisions():
    hub = [spec for spec in pins.SOURCES["dnabert_s"].files]
    assert all(f"/resolve/{pins.DNABERT_S_REVISION}/" in spec.path for spec in hub)
    assert HEX40.fullmatch(pins.DNABERT_S_REVISION) and HEX40.fullmatch(pins.VIRNUCPRO_COMMIT)
    for role in ("classifier_300", "classifier_500"):
        assert all(f"/{pins.VIRNUCPRO_COMMIT}/" in spec.path for spec in pins.SOURCES[role].files)


def test_pins_are_found_by_file_name_wherever_a_manifest_puts_the_file():
    assert pins.pin_for("esm2", "sub/esm2_t36_3B_UR50D.pt").sha256 == EXPECTED_PINS["esm2_t36_3B_UR50D.pt"]
    assert pins.pin_for("dnabert_s", "DNABERT-S/config.json").sha256 == EXPECTED_PINS["DNABERT-S/config.json"]
    assert pins.pin_for("classifier_300", "300_model.pth").git_sha1 == EXPECTED_PINS["300_model.pth"]
    assert pins.pin_for("classifier_300", "500_model.pth") is None  # another role's file
    assert pins.pin_for("dnabert_s", "DNABERT-S/model.safetensors") is None  # not in the published revision


def test_the_old_modules_are_gone():
    root = PACKAGE.parent
    assert not (root / "store.py").exists() and not (root / "download.py").exists()
    with pytest.raises(ModuleNotFoundError):
        __import__("virnucpro.store")


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    """Imported first and alone, each module works; `store` pulls in only `pins`, `pins` nothing."""
    code = (f"import sys, virnucpro.models.{module} as m\n"
            "others = sorted(n for n in sys.modules if n.startswith('virnucpro.models.'))\n"
            "print(' '.join(others))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert f"virnucpro.models.{module}" in loaded
    if module in ("pins", "store"):
        assert loaded == {"virnucpro.models.pins", f"virnucpro.models.{module}"}


def _imports_of(module: str) -> set[str]:
    """Modules of this package that `module` imports anywhere (module level or inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "virnucpro.models":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("virnucpro.models."):
            found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("virnucpro.models.")}
    return found & set(MODULES)


def test_no_import_circle_anywhere_in_the_package():
    """Static check over every import statement, lazy ones included: a tree rooted at `pins`."""
    graph = {module: _imports_of(module) for module in MODULES}
    assert graph == {"pins": set(), "store": {"pins"}, "download": {"pins", "store"}, "tiny": {"store"}}
    init = ast.parse((PACKAGE / "__init__.py").read_text())
    assert not [n for n in ast.walk(init) if isinstance(n, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize("module", MODULES)
def test_functions_are_short(module):
    """Issue 9, point 17: no long functions (download.fetch was 81 lines)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > 40]
    assert not long
