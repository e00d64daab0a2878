# The README's two commands: `make quick` (set up + default experiment end to end) and
# `make test` (set up + lint + tests). Both set everything up themselves.
EXPERIMENT ?= experiments/fashion_mnist_quick.yaml

.PHONY: setup quick test lint

setup:
	@bash scripts/setup.sh

quick: setup
	.venv/bin/autocompress search $(EXPERIMENT)
	.venv/bin/autocompress export $(EXPERIMENT) --knee

lint: setup
	.venv/bin/ruff check autocompress tests
	.venv/bin/ruff format --check autocompress tests

test: lint
	.venv/bin/python -m pytest -p no:cacheprovider
