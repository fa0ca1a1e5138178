# Parley: `make run` starts the whole system, `make test` runs every test. See README.md.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
export UV_LINK_MODE ?= copy
# Browser tests drive Debian's Chromium (a Playwright browser download fails offline).
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup web browser sioclient run token selfcontained test lint typecheck pytest webtest bench clean generate

# uv from PyPI if the machine has none; then the locked workspace.
setup:
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	$(UV) sync --frozen --all-packages

# The chat page: locked npm install and a Vite build into web/dist (served by every gateway).
web:
	@if [ -f web/package.json ]; then \
	  cd web && ( [ -d node_modules ] && [ node_modules -nt package-lock.json ] || npm ci --no-audit --no-fund ) && npm run build; \
	else echo "web/: no package.json yet, skipping the UI build"; fi

# The real socket.io-client (locked) that tests/socketio drives against the gateways.
sioclient:
	cd tests/socketio && ( [ -d node_modules ] && [ node_modules -nt package-lock.json ] || npm ci --no-audit --no-fund )

# Generated from libs/contract (tests fail while these files are stale): the client contract's
# JSON Schema, the web's TypeScript types compiled from it (json-schema-to-typescript) and
# the AsyncAPI documents of the client WebSocket API and of the NATS side.
generate: setup
	$(UV) run --frozen python -m parley_contract.wire_schema web/src/generated/contract.schema.json
	$(UV) run --frozen python -m parley_contract.asyncapi docs/asyncapi/client.json
	$(UV) run --frozen python -m parley_conversation.asyncapi docs/asyncapi/nats.json
	cd web && ( [ -d node_modules ] && [ node_modules -nt package-lock.json ] || npm ci --no-audit --no-fund ) && node scripts/contract.mjs

# Debian's Chromium for the browser tests, when we may install it (root on Debian).
browser:
	@if [ -x "$(CHROMIUM)" ]; then echo "chromium: $(CHROMIUM)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || echo "chromium install failed: browser tests will skip"; \
	else echo "no chromium and not root: browser tests will skip"; fi

run: setup web
	$(UV) run --frozen parley run

# A development JWT on stdout: make -s token SUB=user-456 KIND=user NAME="Ada" (TTL in seconds).
SUB ?= user-1
KIND ?= user
NAME ?=
TTL ?= 86400
token:
	@$(UV) run --frozen --quiet parley token --sub "$(SUB)" --kind "$(KIND)" --ttl "$(TTL)" $(if $(NAME),--name "$(NAME)")

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

typecheck: setup
	$(UV) run --frozen mypy libs services tests bench

webtest: web
	@if [ -f web/package.json ]; then cd web && npm test; fi

pytest: setup web browser sioclient
	$(UV) run --frozen pytest

test: lint typecheck webtest pytest

# The repo stands alone: a fresh clone of HEAD in an empty temp dir, with nothing beside it,
# gets its own venv (hardlinked from uv's cache: ~20 s), collects every test, and runs the
# tests that read the repo's files (docs, links, samples). .ci/run calls it before make test.
selfcontained:
	@if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then echo "selfcontained: not a git checkout, skipped"; exit 0; fi; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	git clone -q . "$$tmp/parley" && cd "$$tmp/parley" && \
	UV_LINK_MODE=hardlink $(UV) sync --frozen --all-packages -q && \
	$(UV) run --frozen pytest --collect-only -q -p no:cacheprovider >"$$tmp/collect.log" 2>&1 \
	  || { cat "$$tmp/collect.log"; echo "selfcontained: the tests do not collect in a fresh clone ($$tmp/parley)"; exit 1; }; \
	echo "selfcontained: $$(tail -1 "$$tmp/collect.log") in a fresh clone of $$(git rev-parse --short HEAD)"; \
	$(UV) run --frozen pytest -q -p no:cacheprovider tests/docs libs/contract

bench: setup
	$(UV) run --frozen python -m bench

# kill -9 each part of a running stack under load; fails when an acked message is lost,
# duplicated or delivered out of order (docs/reliability.md). One scenario: make faults S=nats
.PHONY: faults
faults: setup
	$(UV) run --frozen python -m bench.faults $(S)

# Cluster mode (issue 19): three local NATS nodes from deploy/nats/cluster.conf's text, each
# killed -9 in turn under load (a follower, the meta leader, each asset's leader), ~4 min.
.PHONY: faults-cluster
faults-cluster: setup
	$(UV) run --frozen python -m bench.faults --cluster $(S)

clean:
	rm -rf .venv var artifacts web/dist web/node_modules bench/loadgen/node_modules tests/socketio/node_modules
