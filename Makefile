# The two entry points of the README. Both set everything up first (idempotent).
.PHONY: setup demo test lint perf

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/megaclass demo

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

perf: setup
	.venv/bin/megaclass loadtest perf --model classify
