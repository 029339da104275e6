#!/usr/bin/env python3
"""Build a tiny, randomly initialised Idefics3 (SmolVLM) vision-language model that vLLM
(CPU) serves.

Usage: python make_tiny_vlm.py OUT_DIR [--tokenizer HF_DIR]

For tests that an image reaches a real model: vLLM turns each image into a fixed number of
prompt tokens (PROMPT_TOKENS_PER_IMAGE in place of the one `<image>` placeholder), so the
prompt grows by exactly that much. The answers are noise (random weights); nothing is
downloaded.

- vision tower: Idefics3's SigLIP-style encoder, 2 layers, hidden 64, one 128x128 tile in
  8x8 patches (256), pixel-shuffled by scale_factor 2 -> IMAGE_SEQ_LEN = 64 image tokens;
  image splitting off, so every image is one tile whatever its size;
- text model: Llama, 2 layers, hidden 256, head_dim 64 (as SmolLM2's);
- tokenizer: SmolLM2's (HF_DIR, the copy tests/runtimes/gguf_to_hf.py writes) plus
  Idefics3's special tokens; a ChatML chat template that renders `{"type": "image"}` parts
  as `<image>`; the PIL image processor (the vLLM env has no torchvision, and vLLM's LLaVA
  family imports it, hence Idefics3).

Deterministic (fixed seed): two runs give identical files. Needs torch, transformers and
pillow (all in the vLLM venv). 30 MB (28 MB of weights); 20-30 s here, nearly all imports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TILE = 128
PATCH = 8
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE_FACTOR**2
# <fake_token_around_image><global-img><image>*IMAGE_SEQ_LEN<fake_token_around_image>
# (IMAGE_SEQ_LEN + 3 tokens) replaces the prompt's one <image>.
PROMPT_TOKENS_PER_IMAGE = IMAGE_SEQ_LEN + 3
SPECIAL_TOKENS = [
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]

# ChatML like SmolLM2's own template; content is a string or a list of parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--tokenizer", type=Path, default=Path(".cache/smollm2-hf"), help="SmolLM2 HF copy")
    args = ap.parse_args()
    if not (args.tokenizer / "tokenizer.json").is_file():
        sys.exit(f"error: no tokenizer.json in {args.tokenizer} (build it with gguf_to_hf.py)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch
    from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.idefics3.processing_idefics3 import Idefics3Processor

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    tokenizer.add_tokens(SPECIAL_TOKENS, special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")

    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = Idefics3VisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TILE,
        patch_size=PATCH,
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=SCALE_FACTOR,
        image_token_id=image_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).to(torch.bfloat16).eval()

    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": TILE},
        max_image_size={"longest_edge": TILE},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out_dir)
    processor.save_pretrained(args.out_dir)
    facts = {"image_seq_len": IMAGE_SEQ_LEN, "prompt_tokens_per_image": PROMPT_TOKENS_PER_IMAGE}
    (args.out_dir / "tiny_vlm.json").write_text(json.dumps(facts, indent=2) + "\n")
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out_dir}: {n} parameters, {PROMPT_TOKENS_PER_IMAGE} prompt tokens per image")


if __name__ == "__main__":
    main()
