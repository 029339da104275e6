"""The `translategemma_template` prompt format: TranslateGemma's structured user turn.

TranslateGemma (Gemma 3 based) takes one user message whose content is a list with one
item `{"type": "text", "source_lang_code": S, "target_lang_code": T, "text": ...}`; its
chat template renders that item into this fixed prompt, in Gemma 3's turn markup:

    <start_of_turn>user
    You are a professional {Source} ({S}) to {Target} ({T}) translator. Your goal is to
    accurately convey the meaning and nuances of the original {Source} text while adhering
    to {Target} grammar, vocabulary, and cultural sensitivities.
    Produce only the {Target} translation, without any additional explanations or
    commentary. Please translate the following {Source} text into {Target}:


    {text}<end_of_turn>
    <start_of_turn>model
    (generation starts here)

(The two sentences before "Produce" are one line; "commentary." and "Please" are on one
line; there are two blank lines before the text.) {Source}/{Target} are English language
names looked up from the codes (`LANGUAGES`, region/script suffixes fall back to the base
language), or the code itself when unknown. The BOS token is not in the text.

Mixed source: when `source_lang_code` is absent, "auto" or "mixed", the source code is
`FALLBACK_SOURCE` ("en", a code the template accepts) and the line `MIXED_NOTE` plus a
newline goes first in the user turn, before "You are a professional".

`target_lang_code` is required (`check`, 400 at admission). `instructions` are ignored:
the template has no system role and the model is trained on this prompt only. Single
turn only; no thinking control. Stop: `<end_of_turn>`.
"""

from __future__ import annotations

from llmpool.errors import InvalidRequest
from llmpool.generation import GenerationRequest, content_text
from llmpool.prompts.base import Rendered

STOP: tuple[str, ...] = ("<end_of_turn>",)
MULTI_TURN = False
LANG_CODES = True  # the request's source_lang_code and target_lang_code (others refuse them)
THINKING_MODES: tuple[str, ...] = ("default",)
FALLBACK_SOURCE = "en"
MIXED_SOURCES = ("", "auto", "mixed")
MIXED_NOTE = (
    "The text may mix several languages: detect the language of each segment and translate every segment."
)
LANGUAGES = {
    "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech",
    "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish",
    "et": "Estonian", "fa": "Persian", "fi": "Finnish", "fil": "Filipino", "fr": "French",
    "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian",
    "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sk": "Slovak", "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish",
    "sw": "Swahili", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu",
    "vi": "Vietnamese", "zh": "Chinese",
}  # fmt: skip


def language_name(code: str) -> str:
    """The English name of a language code ("pt-BR" -> "Portuguese"), else the code."""
    base = code.replace("_", "-").split("-")[0].lower()
    return LANGUAGES.get(code.lower(), LANGUAGES.get(base, code))


def check(request: GenerationRequest) -> None:
    """400 unless `target_lang_code` is given (TranslateGemma cannot guess the target)."""
    if not (request.target_lang_code or "").strip():
        raise InvalidRequest("target_lang_code is required for translategemma_template models")


def render(request: GenerationRequest, thinking: str = "disabled") -> Rendered:
    """The TranslateGemma prompt for single-turn `input`; ValueError otherwise."""
    if request.input is None:
        raise ValueError("translategemma_template takes single-turn input only")
    check(request)
    target = str(request.target_lang_code).strip()
    source = (request.source_lang_code or "").strip()
    note = ""
    if source.lower() in MIXED_SOURCES:
        source, note = FALLBACK_SOURCE, MIXED_NOTE + "\n"
    s_name, t_name = language_name(source), language_name(target)
    prompt = (
        f"{note}You are a professional {s_name} ({source}) to {t_name} ({target}) translator. "
        f"Your goal is to accurately convey the meaning and nuances of the original {s_name} "
        f"text while adhering to {t_name} grammar, vocabulary, and cultural sensitivities.\n"
        f"Produce only the {t_name} translation, without any additional explanations or "
        f"commentary. Please translate the following {s_name} text into {t_name}:\n\n\n"
        f"{content_text(request.input)}"
    )
    return Rendered(f"<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n", STOP)
