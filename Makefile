# Two commands: `make run` and `make test`. Both install what they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The install is redone only when the pins change: the stamp is keyed on their hash.
PINS   := pyproject.toml requirements/torch.txt requirements/constraints.txt requirements/lock.txt
STAMP  := $(VENV)/.installed-$(shell cat $(PINS) | sha256sum | cut -c1-16)
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install run test lint serve benchmark fashion-mnist-data clean

install: $(STAMP)

$(STAMP): $(PINS)
	@scripts/check-java
	@rm -f $(VENV)/.installed-*
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements/torch.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -r requirements/lock.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

run: install
	$(BIN)/visionloop run

test: install fashion-mnist-data
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

serve: install
	scripts/serve

benchmark: install fashion-mnist-data
	$(BIN)/python benchmarks/ingest.py

# Debian's Fashion-MNIST (70k images) for the tests that need more than the shipped sample.
fashion-mnist-data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
	  { echo "installing Debian's dataset-fashion-mnist"; \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }

clean:
	rm -rf .visionloop
