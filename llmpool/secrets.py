"""What counts as a secret in a model definition, and how it is hidden (SPEC §5, §8).

A key is secret when one of its `_`-separated words names a key, token, secret, password,
credential, cookie or header map (`remote_api_key`, `vllm_serve_api_key`, `hf_token`,
`remote_headers`); its value is shown as `***` (a header map keeps its header names).
A `*_env` key holds the *name* of an environment variable, which is not a secret and
helps operators; `ENV_NAME` keeps such values to variable names, so a secret pasted
there by mistake is refused at start-up instead of shown.

Command lines get the same treatment: the value after a secret-looking flag
(`--api-key X`, `--hf-token=X`) is hidden before a line is logged or displayed, and
`scrub` replaces known secret values wherever they appear in a child's output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MASK = "***"
_SECRET_WORDS = frozenset(
    {
        "key",
        "keys",
        "token",  # not "tokens": max_tokens and friends are counts
        "secret",
        "secrets",
        "password",
        "passwd",
        "credential",
        "credentials",
        "cookie",
        "cookies",
        "authorization",
        "header",
        "headers",
    }
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WORD = re.compile(r"[a-z0-9]+")


def is_secret_key(name: str) -> bool:
    words = _WORD.findall(name.lower())
    if words and words[-1] == "env":
        return False  # the variable's name, not its value (see ENV_NAME)
    return any(w in _SECRET_WORDS for w in words)


def redact(value: Any) -> Any:
    """A copy of a definition (mappings and lists, nested) with secret values masked."""
    if isinstance(value, Mapping):
        return {k: _masked(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if all(isinstance(v, str) for v in value):
            return redact_argv(value)
        return [redact(v) for v in value]
    return value


def _masked(key: str, value: Any) -> Any:
    if not is_secret_key(key) or value is None:
        return redact(value)
    if isinstance(value, Mapping):  # a header map: names are useful, values are not
        return {k: MASK for k in value}
    return MASK


def _split_argv(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """Each argument as (what may be shown, the secret it carries or None):
    `--api-key X` gives ("--api-key", None), ("X"→secret); `--hf-token=X` one pair."""
    out: list[tuple[str, str | None]] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append((MASK, arg))
            hide_next = False
            continue
        flag, eq, rest = arg.partition("=")
        if arg.startswith("-") and is_secret_key(flag.lstrip("-")):
            if eq:
                out.append((f"{flag}={MASK}", rest))
                continue
            hide_next = True
        out.append((arg, None))
    return out


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line with the values of secret-looking flags masked."""
    return [shown for shown, _ in _split_argv(argv)]


def secret_values(options: Mapping[str, Any], argv: Sequence[str] = ()) -> tuple[str, ...]:
    """Every secret string in a definition and a command line (for `scrub`)."""
    found: list[str] = []
    for key, value in options.items():
        if not is_secret_key(str(key)) or value is None:
            continue
        if isinstance(value, Mapping):
            found.extend(str(v) for v in value.values())
        elif isinstance(value, str):
            found.append(value)
    found.extend(secret for _, secret in _split_argv(argv) if secret is not None)
    # Very short values would mask unrelated text; they are not worth hiding anyway.
    return tuple(sorted({s for s in found if len(s) >= 4}, key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
