# syntax=docker/dockerfile:1.7
# Parley conversation image: the only writer of conversations and messages (NATS queue group
# `conversation`, MongoDB through Beanie); HTTP only for /healthz, /readyz, /metrics.
# Build from the repository root (the uv workspace):
#   docker build -f deploy/docker/conversation.Dockerfile -t parley/conversation .
# Stages: `build` resolves ONLY this package's locked Python dependencies
# (uv sync --frozen --package parley-conversation) into /app/.venv; the runtime stage copies the
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
    uv sync --frozen --no-dev --no-install-workspace --package parley-conversation
# 2) The workspace packages this service uses, installed as wheels (--no-editable), so the
#    runtime stage needs no source tree.
COPY libs/contract libs/contract
COPY libs/runtime libs/runtime
COPY services/conversation services/conversation
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package parley-conversation

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 parley \
    && useradd --system --uid 10001 --gid parley --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin parley
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PARLEY_CONVERSATION_HTTP_HOST=0.0.0.0 \
    PARLEY_CONVERSATION_HTTP_PORT=8100
WORKDIR /app
USER 10001:10001
EXPOSE 8100
# On SIGTERM the service stops taking requests from its queue group and finishes the ones in
# flight (other replicas of the group take over).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PARLEY_CONVERSATION_HTTP_PORT', '8100'), timeout=2)"]
# exec form: python is PID 1 and receives SIGTERM itself (no shell in between).
CMD ["python", "-m", "parley_conversation"]
