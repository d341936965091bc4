# prism-edge: `make demo` and `make test` work on a fresh machine (they create .venv and
# install everything, Debian packages included).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
PIP     := $(BIN)/pip install -q -c constraints.txt

.PHONY: demo test test-fast sysdeps install bench figures clean

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory sysdeps
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch torchvision
	$(PIP) -e ".[runtime,hf,notebooks,test]"
	@touch $@

install: $(STAMP)

# iproute2 brings `ip` and `tc` (network namespaces, veth, tbf/htb shaping).
sysdeps:
	@if command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing iproute2 (ip, tc)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2; \
	else echo "warning: ip/tc missing and not root: the emulated network falls back to loopback" >&2; fi

demo: $(STAMP)
	$(BIN)/python -m runtime demo --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# test-fast: pure Python and one-process torch (no GLOO ranks, no namespaces, nothing slow)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not netns and not gloo"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_runtime.py

# README figures in docs/figures/: the Jetson paper map (jetson_*.png), then every
# data/perfmaps/testbed_*.json present (<map>_*.png). Same plot functions as notebooks/.
# The plots compare single / Voltage / Prism: a map without those (testbed_vit_tp*.json,
# tensor_parallel / galaxy only) is skipped by the plot command itself.
figures: $(STAMP)
	$(BIN)/python -m costmodel plot all --out docs/figures --name jetson
	@for f in data/perfmaps/testbed_*.json; do [ -e "$$f" ] || continue; \
		echo "$(BIN)/python -m costmodel plot all --out docs/figures --perfmap $$f"; \
		$(BIN)/python -m costmodel plot all --out docs/figures --perfmap "$$f" || exit 1; done

clean:
	rm -rf $(VENV) out build *.egg-info
