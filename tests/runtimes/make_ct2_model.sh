#!/usr/bin/env bash
# make_ct2_model.sh VENV_DIR HF_DIR OUT_DIR
#
# Writes a CTranslate2 int8 conversion of the HF copy of SmolLM2 (HF_DIR, made by
# make_vllm_env.sh) into OUT_DIR, for the ct2 backend's tests. The converter runs in
# the vLLM env (VENV_DIR): it already has transformers and torch, which the pool's own
# venv must not need; ctranslate2 is added to it here. The tokenizer files are copied
# beside the weights, since the ct2 adapter reads tokenizer.json from the model dir.
#
# Idempotent: a stamp file in OUT_DIR (keyed by the ctranslate2 version) skips the work
# next time. FORCE=1 redoes it.
set -euo pipefail

CT2_VERSION=4.8.5

die() { echo "make_ct2_model.sh: error: $*" >&2; exit 1; }
log() { echo "make_ct2_model.sh: $*" >&2; }

[[ $# -eq 3 ]] || { echo "usage: $0 VENV_DIR HF_DIR OUT_DIR" >&2; exit 2; }
VENV="$1"; HF_DIR="$2"; OUT_DIR="$3"
PY="$VENV/bin/python"
[[ -x "$PY" ]] || die "$PY not found: build the vLLM env first (tests/runtimes/make_vllm_env.sh)"
[[ -f "$HF_DIR/config.json" && -f "$HF_DIR/tokenizer.json" ]] || die "$HF_DIR is not an HF model dir with tokenizer.json"

STAMP="$OUT_DIR/.stamp-ct2-int8-$CT2_VERSION"
if [[ "${FORCE:-0}" != 1 && -f "$STAMP" && -f "$OUT_DIR/model.bin" ]]; then
    log "CT2 model in $OUT_DIR exists (stamp), skipping"
    exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if ! "$PY" -c "import ctranslate2, sys; sys.exit(ctranslate2.__version__ != '$CT2_VERSION')" 2>/dev/null; then
    log "installing ctranslate2==$CT2_VERSION into $VENV"
    "$PY" -m pip install --no-input --progress-bar off "ctranslate2==$CT2_VERSION" || die "pip install ctranslate2 failed"
fi

t0=$(date +%s)
log "converting $HF_DIR -> $OUT_DIR (int8)"
copy=()
for f in tokenizer.json tokenizer_config.json generation_config.json chat_template.jinja special_tokens_map.json; do
    [[ -f "$HF_DIR/$f" ]] && copy+=("$f")
done
"$VENV/bin/ct2-transformers-converter" --model "$HF_DIR" --output_dir "$OUT_DIR" \
    --quantization int8 --force --copy_files "${copy[@]}" || die "ct2-transformers-converter failed"
touch "$STAMP"
log "conversion done in $(( $(date +%s) - t0 )) s"
