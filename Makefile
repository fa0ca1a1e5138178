# Parley: `make run` starts the whole system, `make test` runs every test. See README.md.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
export UV_LINK_MODE ?= copy

.PHONY: setup run test lint typecheck pytest bench web clean

# uv from PyPI if the machine has none; then the locked workspace.
setup:
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	$(UV) sync --frozen --all-packages

run: setup
	$(UV) run --frozen parley run

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check libs services tests

typecheck: setup
	$(UV) run --frozen mypy libs services tests

pytest: setup
	$(UV) run --frozen pytest

test: lint typecheck pytest

bench: setup
	$(UV) run --frozen python -m bench

clean:
	rm -rf .venv var artifacts web/dist web/node_modules
