"""Bearer-token access rules (SPEC §8): who may call which part of the API.

Two optional secrets, each named by a settings key that holds the *name* of an
environment variable (the values never sit in the settings files):

- `service.admin_token_env`: one token; `/v1/admin/*` (and the operator endpoints) need
  `Authorization: Bearer <it>`.
- `service.api_keys_env`: comma-separated keys; the public API needs one of them. The admin
  token is accepted there too (the operator's workbench tries prompts with it).

A key may come as `Authorization: Bearer <key>` or as `x-api-key: <key>` (Anthropic's
clients send that), on every route alike.

A setting that names an unset or empty variable is a start-up error: the operator asked
for a closed API, so the pool fails closed rather than opening it. Comparison is constant
time and never stops at the first differing key; neither tokens nor their lengths reach
a log line or an error message.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from llmpool.config.spec import ServiceSettings
from llmpool.errors import ConfigError, Unauthorized


class Access(enum.Enum):
    OPEN = "open"  # liveness and readiness probes
    PUBLIC = "public"  # inference and model listing
    ADMIN = "admin"  # the admin API, metrics


def _digest(token: str) -> bytes:
    # Comparing fixed-size digests keeps the tokens' lengths out of the timing too.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, repr=False)
class Credentials:
    """The accepted tokens as digests; `repr` never shows them."""

    admin: bytes | None = None
    keys: tuple[bytes, ...] | None = None

    def __repr__(self) -> str:
        admin = "set" if self.admin else "off"
        keys = f"{len(self.keys)} key(s)" if self.keys is not None else "off"
        return f"Credentials(admin={admin}, api_keys={keys})"

    def check(self, access: Access, authorization: str | None, api_key: str | None = None) -> None:
        """Raise `Unauthorized` unless the key grants `access`: the token of `authorization`
        (the header) or `api_key` (`x-api-key`, as Anthropic's clients send it); both
        given, they must be the same key."""
        if access is Access.OPEN:
            return
        accepted: list[bytes] = []
        if access is Access.ADMIN:
            if self.admin is None:
                return
            accepted.append(self.admin)
        else:
            if self.keys is None:
                return
            accepted.extend(self.keys)
            if self.admin is not None:
                accepted.append(self.admin)
        token = bearer_token(authorization)
        key = api_key.strip() if api_key else None
        if token is not None and key and not hmac.compare_digest(_digest(token), _digest(key)):
            raise Unauthorized("'Authorization' and 'x-api-key' carry different keys; send one")
        token = token or key
        if token is None:
            raise Unauthorized(
                "this endpoint needs 'Authorization: Bearer <token>' (or 'x-api-key: <token>')"
            )
        given = _digest(token)
        matched = False
        for candidate in accepted:  # no early exit: the time does not say which key matched
            matched |= hmac.compare_digest(given, candidate)
        if not matched:
            raise Unauthorized("the bearer token is not valid for this endpoint")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive,
    RFC 7235); None for a missing header, another scheme or an empty token."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def credentials_from(service: ServiceSettings, environ: Mapping[str, str]) -> Credentials:
    """Read the secrets the settings name; ConfigError when a named variable is unset or
    empty, or holds no key."""
    admin_env = service.admin_token_env
    keys_env = service.api_keys_env
    admin = None
    keys = None
    if admin_env is not None:
        token = _required(environ, str(admin_env), "service.admin_token_env").strip()
        admin = _digest(token)
    if keys_env is not None:
        raw = _required(environ, str(keys_env), "service.api_keys_env")
        parts = [k.strip() for k in raw.split(",")]
        if not all(parts):
            raise ConfigError(
                f"service.api_keys_env: the environment variable {keys_env} has an empty key "
                "(keys are comma-separated, without empty entries)"
            )
        keys = tuple(_digest(k) for k in parts)
    return Credentials(admin=admin, keys=keys)


def _required(environ: Mapping[str, str], name: str, setting: str) -> str:
    value = environ.get(name, "")
    if not value.strip():
        state = "is empty" if name in environ else "is not set"
        raise ConfigError(
            f"{setting} names the environment variable {name}, which {state}; "
            "set it, or remove the setting to run without authentication"
        )
    return value
