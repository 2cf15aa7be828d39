# optkit: two commands do everything on a fresh machine with Python 3.11.
#   make week   create .venv, install, build the models, run the sprint week
#   make test   create/use .venv, run the whole test suite (notebooks included)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MODELS := build/models
WEEK_ARGS ?=

.PHONY: week test install models wrk chromium smoke calibrate clean faults soak ray-check fuzz external external-example mlserver vs-mlserver

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

# Chromium for the reports' browser check (optkit check-reports, tests/test_browser_check.py),
# driven by Playwright (dev extra); Playwright's own browser download is not used.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	      || echo "optkit: could not install chromium; the browser checks of the reports will skip"; \
	  else echo "optkit: chromium not installed (needs root + apt-get); the browser checks will skip"; fi; }

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
# First the unit and integration tests two at a time (pytest-xdist, one per core); then, one at
# a time, the tests that bound a time, rate or CPU (conftest.SERIAL_MODULES), the load tests
# and the notebooks, so no neighbour's CPU decides whether they pass.
test: $(STAMP) wrk chromium
	OPTKIT_QUICK=1 $(BIN)/python -m pytest -q -n 2 -m "not heavy and not serial and (unit or integration)" tests
	OPTKIT_QUICK=1 $(BIN)/python -m pytest -q -m "not heavy and (serial or load or comprehensive)" --nbmake tests notebooks

# The fault-injection suite in full, heavy scenarios included (docs/reliability.md), and
# the no-cross-talk check at full size (20,000 requests).
faults: $(STAMP)
	$(BIN)/python -m pytest -q tests/faults tests/test_crosstalk.py

# Schema-driven fuzzing of both tiers from the OpenAPI document (schemathesis, 150 examples
# per operation per tier; the default run does 3) plus the two-tier bad-request corpus.
fuzz: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_openapi.py tests/test_tier_agreement.py

# SOAK_MINUTES of mixed checked load with reloads; report in runs/soak (not part of make test).
SOAK_MINUTES ?= 10
soak: models
	$(BIN)/optkit soak --minutes $(SOAK_MINUTES) --repository $(MODELS) --out runs/soak

# The Ray load-generator engine (optional extra optkit[ray], ~250 MB): its heavy test on a local
# Ray instance (about 30 s here, most of it Ray's start-up).
ray-check: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[ray]'
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_bench_ray.py

# External arms (command / url) through a whole compare session, optkit bench against MLServer
# and a failing week day, heavy tests included (~70 s),
# and the worked example optkit model server vs MLServer (needs .venv-mlserver; ~2 min).
external: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_external_arms.py \
	    tests/test_bench_any_target.py tests/test_vs_mlserver.py

external-example: models
	$(BIN)/optkit compare experiments/external/optkit.yaml experiments/external/mlserver.yaml \
	    --workload experiments/external/workload.yaml --pairs 4 --warmup 1 --duration 2 \
	    --load closed:8 --calibration none --out runs/external-vs-mlserver

# MLServer 1.7.1 (its newest release) in a venv of its own, apart from optkit's, with optkit's
# scikit-learn so the joblib loads the same way, and uvloop < 0.22 (0.22 breaks its worker
# processes: SeldonIO/MLServer#2286, open for 1.7.1).
.venv-mlserver/bin/mlserver: | $(STAMP)
	$(PYTHON) -m venv .venv-mlserver
	.venv-mlserver/bin/python -m pip install --quiet mlserver==1.7.1 mlserver-sklearn==1.7.1 \
	    "scikit-learn==$$($(BIN)/python -c 'import sklearn; print(sklearn.__version__)')" \
	    "uvloop<0.22"

mlserver: .venv-mlserver/bin/mlserver

# optkit's model server vs MLServer's best, a paired verdict (benchmarks/README.md; ~15 min)
vs-mlserver: models wrk mlserver
	$(BIN)/python benchmarks/vs_mlserver.py $(VS_MLSERVER_ARGS)

clean:
	rm -rf build runs $(VENV)
