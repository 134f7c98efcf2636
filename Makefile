# umsrep: `make demo` installs and runs the node on its embedded default;
# `make test` installs and runs the checks and the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the tests use: dcmtk (storescu, storescp, echoscu), dicom3tools
# (dciodvfy), orthanc (the PACS of the end-to-end tests), chromium and its driver (the
# console's browser tests).
APT_PACKAGES := dcmtk dicom3tools orthanc chromium chromium-driver
APT_PROBES := /usr/bin/storescu /usr/bin/dciodvfy /usr/sbin/Orthanc /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps demo test lint bench
install: system-deps $(VENV)/.installed

system-deps:
	@for f in $(APT_PROBES); do [ -x $$f ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(APT_PACKAGES); \
	fi

# torch first, pinned: that CPU build is what a plain `torch` requirement would otherwise
# replace with several GB of CUDA wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/umsrep demo --out demo-out

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# The whole suite on $(PYTHON), then the torch-free tests on the other Pythons found here.
test: lint
	$(BIN)/pytest
	.ci/other-pythons

bench: install
	$(BIN)/python bench/receive.py
