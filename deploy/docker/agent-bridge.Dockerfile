# syntax=docker/dockerfile:1.7
# Parley agent-bridge image: runs agents in conversations (LLM backends, MCP tools, streaming);
# HTTP only for /healthz, /readyz, /metrics.
# Build from the repository root (the uv workspace):
#   docker build -f deploy/docker/agent-bridge.Dockerfile -t parley/agent-bridge .
# Stages: `build` resolves ONLY this package's locked Python dependencies
# (uv sync --frozen --package parley-agent-bridge) into /app/.venv; the runtime stage copies the
# venv, installs nothing and runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# uv from PyPI, pinned (the version that wrote uv.lock).
RUN pip install --no-cache-dir "uv==0.13.9"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# 1) Dependencies only. uv needs every workspace member's pyproject.toml to read the lock,
#    but no source: this layer stays cached until uv.lock or a pyproject.toml changes.
COPY pyproject.toml uv.lock ./
COPY libs/contract/pyproject.toml libs/contract/pyproject.toml
COPY libs/devstack/pyproject.toml libs/devstack/pyproject.toml
COPY libs/runtime/pyproject.toml libs/runtime/pyproject.toml
COPY services/conversation/pyproject.toml services/conversation/pyproject.toml
COPY services/gateway/pyproject.toml services/gateway/pyproject.toml
COPY services/agent-bridge/pyproject.toml services/agent-bridge/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package parley-agent-bridge
# 2) The workspace packages this service uses, installed as wheels (--no-editable), so the
#    runtime stage needs no source tree.
COPY libs/contract libs/contract
COPY libs/runtime libs/runtime
COPY services/agent-bridge services/agent-bridge
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package parley-agent-bridge

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 parley \
    && useradd --system --uid 10001 --gid parley --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin parley
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PARLEY_AGENT_BRIDGE_HTTP_HOST=0.0.0.0 \
    PARLEY_AGENT_BRIDGE_HTTP_PORT=8200
WORKDIR /app
USER 10001:10001
EXPOSE 8200
# On SIGTERM the bridge stops taking new turns from its queue group; a turn in flight is
# finished or failed visibly within the grace period.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PARLEY_AGENT_BRIDGE_HTTP_PORT', '8200'), timeout=2)"]
# exec form: python is PID 1 and receives SIGTERM itself (no shell in between).
CMD ["python", "-m", "parley_agent_bridge"]
