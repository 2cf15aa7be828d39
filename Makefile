# optkit: two commands do everything on a fresh machine with Python 3.11.
#   make week   create .venv, install, build the models, run the sprint week
#   make test   create/use .venv, run the whole test suite (notebooks included)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MODELS := build/models
WEEK_ARGS ?=

.PHONY: week test install models wrk smoke calibrate clean faults soak ray-check

calibrate: models
	rm -f runs/calibration.json
	$(MAKE) runs/calibration.json

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "optkit needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

# wrk is optional: the built-in load generator works without it.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq wrk >/dev/null) \
	      || echo "optkit: could not install wrk; benchmarks fall back to the built-in generator"; \
	  else echo "optkit: wrk not installed (needs root + apt-get); using the built-in generator"; fi; }

models: $(STAMP)
	$(BIN)/optkit models build --repository $(MODELS)

smoke: models
	$(BIN)/optkit smoke --repository $(MODELS)

# The machine's noise (A/A trials of the baseline) is measured once and reused by every
# comparison; delete runs/calibration.json to measure it again.
runs/calibration.json: | models wrk
	$(BIN)/optkit calibrate experiments/baseline.yaml --repository $(MODELS) --out $@

week: models wrk runs/calibration.json
	$(BIN)/optkit smoke --repository $(MODELS)
	$(BIN)/optkit week --repository $(MODELS) $(WEEK_ARGS)

# Notebooks run under nbmake in quick mode (OPTKIT_QUICK=1): real servers, fewer/shorter trials.
test: $(STAMP) wrk
	OPTKIT_QUICK=1 $(BIN)/python -m pytest -q -m "not heavy" --nbmake tests notebooks

# The fault-injection suite in full, heavy scenarios included (docs/reliability.md).
faults: $(STAMP)
	$(BIN)/python -m pytest -q tests/faults

# SOAK_MINUTES of mixed checked load with reloads; report in runs/soak (not part of make test).
SOAK_MINUTES ?= 10
soak: models
	$(BIN)/optkit soak --minutes $(SOAK_MINUTES) --repository $(MODELS) --out runs/soak

# The Ray load-generator engine (optional extra optkit[ray], ~250 MB): its heavy test on a local
# Ray instance (about 30 s here, most of it Ray's start-up).
ray-check: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[ray]'
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_bench_ray.py

clean:
	rm -rf build runs $(VENV)
