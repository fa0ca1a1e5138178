"""Each workspace member declares what its ``src/`` imports, and imports what it declares.

deptry (a maintained checker that reads PEP 621 metadata and maps distributions to their
import names from the installed venv) runs once per member, from the member's folder, so
each pyproject.toml is judged alone: a module that is only reachable because another member
or the root project installed it (DEP003, "transitive") fails here, and so does a declared
distribution nothing imports (DEP002). Exceptions sit in the member's ``[tool.deptry]`` with
the reason next to them.
"""

from __future__ import annotations

import glob
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _members() -> list[Path]:
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns: list[str] = root["tool"]["uv"]["workspace"]["members"]
    found = [Path(p) for pattern in patterns for p in glob.glob(str(REPO / pattern))]
    return sorted(p for p in found if (p / "pyproject.toml").is_file())


MEMBERS = _members()


def test_every_member_is_checked() -> None:
    names = {str(p.relative_to(REPO)) for p in MEMBERS}
    assert {"libs/contract", "services/gateway", "services/agent-bridge"} <= names


@pytest.mark.parametrize("member", MEMBERS, ids=lambda p: str(p.relative_to(REPO)))
def test_declared_dependencies_match_imports(member: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deptry", "src"],
        cwd=member,
        capture_output=True,
        text=True,
        timeout=120,
        env={"NO_COLOR": "1", "PATH": str(Path(sys.executable).parent)},
        check=False,
    )
    assert proc.returncode == 0, (
        f"{member.relative_to(REPO)}: declared dependencies and imports disagree "
        f"(fix pyproject.toml, or add a reasoned [tool.deptry] exception):\n"
        f"{proc.stdout}{proc.stderr}"
    )
