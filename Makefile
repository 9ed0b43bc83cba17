# Two commands: `make run` and `make test`. Both install what they need on first use.
PYTHON ?= python3
PIP    := --quiet --disable-pip-version-check
# Each environment is reinstalled only when its pins change: its stamp is keyed on their hash.
stamp = $(1)/.installed-$(shell cat $(2) | sha256sum | cut -c1-16)

VENV   := .venv
BIN    := $(VENV)/bin
PINS   := pyproject.toml requirements/torch.txt requirements/constraints.txt requirements/lock.txt
STAMP  := $(call stamp,$(VENV),$(PINS))
# petastorm needs pyarrow < 15 and Label Studio conflicts with Prefect: environments of their own.
PETASTORM_VENV := .venv-petastorm
PETASTORM_STAMP := $(call stamp,$(PETASTORM_VENV),requirements/petastorm.txt)
LABEL_STUDIO_VENV := .venv-label-studio
LABEL_STUDIO_STAMP := $(call stamp,$(LABEL_STUDIO_VENV),requirements/label-studio.txt)
# Debian packages the tests use: Fashion-MNIST (benchmarks, some tests) and a headless
# browser with its driver (the Prefect and Label Studio UI checks).
DEBIAN_PACKAGES := dataset-fashion-mnist chromium chromium-driver

export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install petastorm label-studio run test lint serve benchmark debian-packages clean

install: $(STAMP)

$(STAMP): $(PINS)
	@scripts/check-java
	@rm -f $(VENV)/.installed-*
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP) -r requirements/torch.txt
	$(BIN)/pip install $(PIP) -c requirements/constraints.txt -r requirements/lock.txt
	$(BIN)/pip install $(PIP) --no-deps --no-build-isolation -e .
	@touch $@

petastorm: $(PETASTORM_STAMP)

$(PETASTORM_STAMP): requirements/petastorm.txt
	@rm -rf $(PETASTORM_VENV)
	$(PYTHON) -m venv $(PETASTORM_VENV)
	$(PETASTORM_VENV)/bin/pip install $(PIP) --no-deps -r requirements/petastorm.txt
	@touch $@

label-studio: $(LABEL_STUDIO_STAMP)

$(LABEL_STUDIO_STAMP): requirements/label-studio.txt
	@rm -rf $(LABEL_STUDIO_VENV)
	$(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/pip install $(PIP) --no-deps -r requirements/label-studio.txt
	@touch $@

run: install
	$(BIN)/visionloop run --sample

test: install petastorm label-studio debian-packages
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

serve: install label-studio
	scripts/serve

benchmark: install debian-packages
	$(BIN)/python -m benchmarks.ingest

debian-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	  fi

clean:
	rm -rf .visionloop
