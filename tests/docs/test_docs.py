"""The docs hold together: every relative link in the repo's Markdown resolves (file and
``#anchor``), nothing points outside the repo, and the local addresses and variables the
docs give are the ones ``make run`` uses."""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest

from parley_devstack import cli

REPO = Path(__file__).resolve().parents[2]
# Build output, installs and local data: not the repo's documents.
SKIP_DIRS = {
    ".git",
    ".venv",
    "node_modules",
    "var",
    "artifacts",
    "dist",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "raw",
}
TEXT_SUFFIXES = {".md", ".py", ".ts", ".tsx", ".toml", ".yml", ".yaml", ".sh", ".conf", ".cfg"}
# How the repo used to reach outside itself (issue 13.8).
OUTSIDE = re.compile(
    r"\.\./shared\b|\bshared/(protocol|architecture)\.md|\bshared/(seed|notes)/|/work/"
)

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _files(suffixes: set[str]) -> list[Path]:
    found = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if any(part in SKIP_DIRS for part in rel.parts[:-1]):
            continue
        if path.is_file() and (path.suffix in suffixes or path.name in ("Makefile", "run")):
            found.append(path)
    return sorted(found)


def _markdown() -> list[Path]:
    return _files({".md"})


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links → their text
    text = text.replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


@cache
def _anchors(path: Path) -> frozenset[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    anchors = set()
    for match in HEADING.finditer(text):
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return frozenset(anchors)


def _links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = INLINE_CODE.sub("", text)
    return [m.group(1) for m in LINK.finditer(text)]


def test_the_markdown_files_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in _markdown()}
    assert {"README.md", "docs/protocol.md", "services/gateway/README.md"} <= names


@pytest.mark.parametrize("path", _markdown(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(path: Path) -> None:
    problems = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if REPO not in dest.parents and dest != REPO:
            problems.append(f"{target}: outside the repo")
            continue
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor.lower() not in _anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not problems, "\n".join(problems)


def test_slugs_follow_github() -> None:
    assert _slug("1. Connecting") == "1-connecting"
    assert _slug("3.4 Commands") == "34-commands"
    assert _slug("`conversation:join`") == "conversationjoin"
    assert _slug("Targets: met or missed") == "targets-met-or-missed"


def test_nothing_reads_or_links_outside_the_repo() -> None:
    this = Path(__file__).resolve()
    problems = []
    for path in _files(TEXT_SUFFIXES):
        if path == this:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
            if OUTSIDE.search(line):
                problems.append(f"{path.relative_to(REPO)}:{n + 1}: {line.strip()[:120]}")
    assert not problems, "\n".join(problems)


def _first_run_port() -> int:
    source = Path(cli.__file__).read_text(encoding="utf-8")
    match = re.search(r'"PARLEY_RUN_GATEWAY_PORTS", "(\d+)', source)
    assert match, "parley run's default gateway ports not found"
    return int(match.group(1))


@pytest.mark.parametrize(
    "rel",
    [
        "web/vite.config.ts",
        "web/README.md",
        "examples/external_agent.py",
        "services/agent-bridge/README.md",
        "README.md",
    ],
)
def test_local_gateway_addresses_are_the_ones_make_run_opens(rel: str) -> None:
    """The defaults and examples point at a gateway `make run` starts (8001, 8002)."""
    port = _first_run_port()
    text = (REPO / rel).read_text(encoding="utf-8")
    local = r"\b(?:https?|wss?)://(?:127\.0\.0\.1|localhost):(\d+)"
    used = {int(p) for p in re.findall(local, text)}
    assert used, f"{rel} names no local address"
    assert used <= {port, port + 1}, f"{rel} uses {sorted(used)}; make run opens {port}, {port + 1}"


def test_make_run_variables_are_documented() -> None:
    source = Path(cli.__file__).read_text(encoding="utf-8")
    names = set(re.findall(r"os\.environ\.get\(\s*\"([A-Z0-9_]+)\"", source))
    assert {"PARLEY_RUN_GATEWAY_PORTS", "PARLEY_RUN_HOST"} <= names
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"docs/configuration.md does not list {missing}"
