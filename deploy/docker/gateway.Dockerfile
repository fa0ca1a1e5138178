# syntax=docker/dockerfile:1.7
# Parley gateway image: the stateless WebSocket + HTTP gateway, which also serves the web UI.
# Build from the repository root (the uv workspace):
#   docker build -f deploy/docker/gateway.Dockerfile -t parley/gateway .
# Stages: `web` builds web/dist with npm ci (package-lock.json); `build` resolves ONLY this
# package's locked Python dependencies (uv sync --frozen --package parley-gateway) into
# /app/.venv; the runtime stage copies the venv and the built UI, installs nothing and runs
# as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim
ARG NODE_IMAGE=node:22-slim

FROM ${NODE_IMAGE} AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

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
    uv sync --frozen --no-dev --no-install-workspace --package parley-gateway
# 2) The workspace packages this service uses, installed as wheels (--no-editable), so the
#    runtime stage needs no source tree.
COPY libs/contract libs/contract
COPY libs/runtime libs/runtime
COPY services/gateway services/gateway
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package parley-gateway

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 parley \
    && useradd --system --uid 10001 --gid parley --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin parley
COPY --from=build /app/.venv /app/.venv
COPY --from=web /web/dist /app/web/dist
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PARLEY_GATEWAY_HOST=0.0.0.0 \
    PARLEY_GATEWAY_PORT=8001 \
    PARLEY_GATEWAY_WEB_DIST=/app/web/dist
WORKDIR /app
USER 10001:10001
EXPOSE 8001
# The gateway drains on SIGTERM: readiness off, sockets closed with 1001 over a short spread.
# Give it time: `docker stop -t 30` / compose `stop_grace_period`, k8s
# terminationGracePeriodSeconds (docs/deployment.md).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PARLEY_GATEWAY_PORT', '8001'), timeout=2)"]
# exec form: python is PID 1 and receives SIGTERM itself (no shell in between).
CMD ["python", "-m", "parley_gateway"]
