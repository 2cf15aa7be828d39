# optkit: two commands do everything on a fresh machine with Python 3.11.
#   make week   create .venv, install, build the models, run the sprint week
#   make test   create/use .venv, run the whole test suite (notebooks included)
# and one more runs every heavy suite make test leaves out (CI runs both: .ci/run):
#   make heavy  faults, fuzzing, the Ray engine, third-party servers, a short soak, the gate,
#               Monday in JupyterLab driven by Chromium

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MODELS := build/models
WEEK_ARGS ?=

.PHONY: week test install models wrk chromium smoke calibrate clean faults soak ray-check fuzz \
	external external-example third-party soak-short heavy \
	mlserver vs-mlserver gate-check tune-check gate-demo triton triton-check jupyterlab-check grpc-proto

# Measure the baseline's cell (digits, closed:32) again; the other cells are kept.
calibrate: models
	$(BIN)/optkit calibrate experiments/baseline.yaml --repository $(MODELS) --out runs/calibration.json

# The install goes through uv (from PyPI, into the venv) when it can be had: the same packages
# as pip's resolver picks, ~20 s here instead of pip's ~70 s (upgrade + install, warm cache),
# byte-compiled as pip does. Where uv cannot be installed, pip does it as before.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "optkit needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -m pip install --quiet 'uv>=0.5' >/dev/null 2>&1; then \
	  echo "$(BIN)/uv pip install -e '.[lab,dev]'"; \
	  $(BIN)/uv pip install --python $(BIN)/python --native-tls --quiet --compile-bytecode \
	    -e '.[lab,dev]'; \
	else \
	  echo "optkit: uv not installable; installing with pip"; \
	  $(BIN)/python -m pip install --quiet --upgrade pip \
	    && $(BIN)/python -m pip install --quiet -e '.[lab,dev]'; \
	fi
	@touch $@

install: $(STAMP)

# Regenerate the committed gRPC code (optkit/v2/_proto) from Triton's .proto files beside it;
# installs never need this (the generated modules are committed).
grpc-proto: $(STAMP)
	$(BIN)/python -m optkit.v2._proto._generate

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

# The machine's noise: each (workload, load) a day judges is measured (A/A trials of the day's
# starting config) the first time a day needs it, into runs/calibration.json, and reused by
# every later day and week; delete the file to measure them all again.
week: models wrk
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
# the no-cross-talk check at full size (20,000 requests). -rs: every skip says why.
faults: $(STAMP)
	$(BIN)/python -m pytest -q -rs tests/faults tests/test_crosstalk.py

# Schema-driven fuzzing of both tiers from the OpenAPI document (schemathesis, 150 examples
# per operation per tier; the default run does 3) plus the two-tier bad-request corpus.
fuzz: $(STAMP)
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider tests/test_openapi.py tests/test_tier_agreement.py

# SOAK_MINUTES of mixed checked load with reloads; report in SOAK_OUT (not part of make test).
# It prints a progress line each minute.
SOAK_MINUTES ?= 10
SOAK_OUT ?= runs/soak
soak: models
	$(BIN)/optkit soak --minutes $(SOAK_MINUTES) --repository $(MODELS) --out $(SOAK_OUT)

# The short soak of make heavy: the same checks, HEAVY_SOAK_MINUTES long.
HEAVY_SOAK_MINUTES ?= 4
soak-short: models
	$(BIN)/optkit soak --minutes $(HEAVY_SOAK_MINUTES) --repository $(MODELS) --out runs/soak-short

# Installs from the package registry that heavy tests need. One that fails leaves its pip
# output's last lines in build/third-party/<name>.failed (and no venv); the tests that need
# it then skip, quoting that file: said, never silently passed.
THIRD_PARTY := build/third-party
SKLEARN_VERSION = $(shell $(BIN)/python -c 'import sklearn; print(sklearn.__version__)')
MLSERVER_PIP := mlserver==1.7.1 mlserver-sklearn==1.7.1 uvloop<0.22
KSERVE_PIP := kserve==0.21.0 joblib
# $(call venv_from_pypi,NAME,REQUIREMENTS): .venv-NAME holding REQUIREMENTS and optkit's
# scikit-learn (so the digits-sklearn pickle loads the same); reinstalled when they change.
define venv_from_pypi
	@mkdir -p $(THIRD_PARTY); want='$(2) scikit-learn==$(SKLEARN_VERSION)'; \
	if [ "$$(cat .venv-$(1)/.optkit-requirements 2>/dev/null)" != "$$want" ]; then \
	  echo "optkit: installing $(1) from PyPI into .venv-$(1): $$want"; \
	  rm -rf .venv-$(1) $(THIRD_PARTY)/$(1).failed; \
	  if $(PYTHON) -m venv .venv-$(1) > $(THIRD_PARTY)/$(1).log 2>&1 \
	     && .venv-$(1)/bin/python -m pip install --quiet $$want >> $(THIRD_PARTY)/$(1).log 2>&1; \
	  then echo "$$want" > .venv-$(1)/.optkit-requirements; \
	  else tail -n 15 $(THIRD_PARTY)/$(1).log > $(THIRD_PARTY)/$(1).failed; rm -rf .venv-$(1); \
	    echo "optkit: could not install $(1) (see $(THIRD_PARTY)/$(1).failed): its tests will skip"; \
	  fi; \
	fi
endef

third-party: $(STAMP) triton
	$(call venv_from_pypi,mlserver,$(MLSERVER_PIP))
	$(call venv_from_pypi,kserve,$(KSERVE_PIP))

# NVIDIA Triton through pytriton's wheel (it bundles tritonserver; benchmarks/triton_digits.py),
# in two venvs. .venv-triton runs the model process: pytriton, optkit's numpy 2 and scikit-learn
# (the pickle needs them). pytriton's metadata pins numpy < 2, so it goes in with --no-deps after
# its other requirements. .venv-triton-stub is what Triton's Python-backend stub imports: the
# stub embeds the system libpython3.11 (Debian's python3.11 package, so the venv is made from
# /usr/bin/python3.11: another interpreter's stdlib fails in the stub) and was built against
# numpy 1's ABI (with numpy 2 every inference fails: "output tensor shape does not match size").
TRITON_PIP := nvidia-pytriton==0.7.0
TRITON_DEPS := pyzmq>=23.0 protobuf>=3.7 sh>=1.14 tritonclient[grpc,http]~=2.50 grpcio>=1.64.3 \
	typing_inspect>=0.6.0 wrapt>=1.11 typer>=0.9.0 importlib_metadata>=7.0.1 joblib
TRITON_STUB_PYTHON ?= /usr/bin/python3.11
TRITON_STUB_PIP := numpy==1.26.4 pyzmq>=23.0
NUMPY_VERSION = $(shell $(BIN)/python -c 'import numpy; print(numpy.__version__)')
triton: $(STAMP)
	@mkdir -p $(THIRD_PARTY); log=$(THIRD_PARTY)/triton.log; \
	deps='$(TRITON_DEPS) numpy==$(NUMPY_VERSION) scikit-learn==$(SKLEARN_VERSION)'; \
	stub='$(TRITON_STUB_PIP)'; want="$(TRITON_PIP) | $$deps | stub: $(TRITON_STUB_PYTHON) $$stub"; \
	if [ "$$(cat .venv-triton/.optkit-requirements 2>/dev/null)" != "$$want" ]; then \
	  echo "optkit: installing Triton (pytriton) from PyPI into .venv-triton and .venv-triton-stub"; \
	  rm -rf .venv-triton .venv-triton-stub $(THIRD_PARTY)/triton.failed; \
	  if { [ -x $(TRITON_STUB_PYTHON) ] || { echo "no $(TRITON_STUB_PYTHON): the stub of" \
	         "Triton's Python backend embeds the system libpython3.11 (apt-get install" \
	         "python3.11 python3.11-venv)"; false; }; } > $$log 2>&1 \
	     && $(TRITON_STUB_PYTHON) -m venv .venv-triton-stub >> $$log 2>&1 \
	     && .venv-triton-stub/bin/python -m pip install --quiet $$stub >> $$log 2>&1 \
	     && $(PYTHON) -m venv .venv-triton >> $$log 2>&1 \
	     && .venv-triton/bin/python -m pip install --quiet $$deps >> $$log 2>&1 \
	     && .venv-triton/bin/python -m pip install --quiet --no-deps $(TRITON_PIP) >> $$log 2>&1 \
	     && .venv-triton/bin/python -c 'import pytriton.triton, numpy, sklearn' >> $$log 2>&1; \
	  then echo "$$want" > .venv-triton/.optkit-requirements; \
	  else tail -n 15 $$log > $(THIRD_PARTY)/triton.failed; rm -rf .venv-triton .venv-triton-stub; \
	    echo "optkit: could not install triton (see $(THIRD_PARTY)/triton.failed): its tests will skip"; \
	  fi; \
	fi

# The Ray load-generator engine (optional extra optkit[ray], ~250 MB): its heavy test on a local
# Ray instance (about 30 s here, most of it Ray's start-up).
ray-check: $(STAMP)
	@mkdir -p $(THIRD_PARTY); rm -f $(THIRD_PARTY)/ray.failed
	@$(BIN)/python -m pip install --quiet -e '.[ray]' > $(THIRD_PARTY)/ray.log 2>&1 \
	  || { tail -n 15 $(THIRD_PARTY)/ray.log > $(THIRD_PARTY)/ray.failed; \
	       echo "optkit: could not install optkit[ray] (see $(THIRD_PARTY)/ray.failed): its test will skip"; }
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider tests/test_bench_ray.py

# External arms (command / url) through a whole compare session, optkit bench against
# MLServer and KServe (from PyPI, their own venvs: make third-party) and a failing week day,
# optkit's gateway in front of each of the three (tritonclient's answers, the bad-request
# corpus), heavy tests included (~2 min), Triton's arm answering like the pipeline (~20 s),
# and the worked example optkit model server vs MLServer (make external-example; ~2 min),
# and vs_mlserver.py's arms and a short verdict.
external: $(STAMP) models third-party
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider tests/test_external_arms.py \
	    tests/test_bench_any_target.py tests/test_vs_mlserver.py tests/test_triton.py \
	    tests/test_third_party_gateway.py tests/test_lab_grpc.py

# Triton's arm alone (make triton, then its test; ~20 s).
triton-check: $(STAMP) models triton
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider tests/test_triton.py

# The performance gate's tests, heavy ones included: an A/A gate of a real two-commit repo
# and 2,000 simulated gates against the targets (false alarms <= 1 %, power >= 90 %; ~1 min).
gate-check: $(STAMP)
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider tests/test_gate.py tests/test_gate_workflow.py

# optkit tune's live tests in full (tests/test_tune.py, test_tune_arm.py, ~1 min): resume, budget,
# Ctrl-C, an SLO no candidate meets, a templated arm, on real stacks; make test keeps its tiny tune
# and notebook 07's quick mode.
tune-check: $(STAMP) models
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider tests/test_tune.py tests/test_tune_arm.py

# Monday's notebook in JupyterLab as a person runs it (tests/test_jupyterlab.py, ~1 min):
# JupyterLab on loopback, Chromium driven by Playwright, Run All Cells, then Save; progress
# seen in the cell while the session runs, none left in the saved notebook. Screenshots in
# runs/jupyterlab/.
jupyterlab-check: $(STAMP) chromium
	OPTKIT_SCREENSHOTS=runs/jupyterlab $(BIN)/python -m pytest -q -rs -p no:cacheprovider \
	    tests/test_jupyterlab.py

# optkit gate on optkit's own model server both ways (docs/gate.md; ~15 min): a 10 % slower
# request path must exit 1, the same ref twice 0; summaries in runs/gate-demo/.
gate-demo: $(STAMP)
	benchmarks/gate_demo.sh

# Every heavy suite, one after another (each runs even if one before it failed), then a
# line per suite with its outcome and time (also in runs/heavy.txt); fails if any failed.
HEAVY_SUITES := faults fuzz ray-check external soak-short gate-check tune-check jupyterlab-check
heavy: $(STAMP) models
	@mkdir -p runs; : > runs/heavy.txt; failed=0; \
	for suite in $(HEAVY_SUITES); do \
	  start=$$(date +%s); \
	  if $(MAKE) --no-print-directory $$suite; then outcome=passed; else outcome=FAILED; failed=1; fi; \
	  echo "make $$suite: $$outcome in $$(( $$(date +%s) - start )) s" >> runs/heavy.txt; \
	done; \
	echo "optkit heavy suites:"; sed 's/^/  /' runs/heavy.txt; exit $$failed

external-example: models
	$(BIN)/optkit compare experiments/external/optkit.yaml experiments/external/mlserver.yaml \
	    --workload experiments/external/workload.yaml --pairs 4 --warmup 1 --duration 2 \
	    --load closed:8 --calibration none --out runs/external-vs-mlserver

# MLServer alone (its venv as make third-party makes it), for make vs-mlserver.
mlserver: $(STAMP)
	$(call venv_from_pypi,mlserver,$(MLSERVER_PIP))

# optkit's model server vs MLServer's best, a paired verdict (benchmarks/README.md; ~15 min)
vs-mlserver: models wrk mlserver
	$(BIN)/python benchmarks/vs_mlserver.py $(VS_MLSERVER_ARGS)

clean:
	rm -rf build runs $(VENV)
