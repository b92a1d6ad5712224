"""No file holds what nf-core's `template_strings` lint check takes for a Jinja string (a name in
doubled braces): two test strings with doubled braces failed CI's lint after 40 minutes; found here
in a second."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# as the check reads a line: doubled braces around text without ':' or '}', GitHub's ${{ }} aside
JINJA_LIKE = re.compile(r"(?<!\$)\{\{[^:}]*\}\}")


def test_no_tracked_file_holds_a_jinja_like_string():
    ignored = set(yaml.safe_load((REPO / ".nf-core.yml").read_text())["lint"]["template_strings"])
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in tracked:
        path = REPO / name
        if name in ignored or not path.is_file():
            continue
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            continue  # binary: the check skips it too
        found += [f"{name}:{number}: {line.strip()}" for number, line in enumerate(lines, 1) if JINJA_LIKE.search(line)]
    assert not found, "nf-core lint would fail (template_strings):\n" + "\n".join(found)
