"""The media settings as a typed, immutable policy, and what its checks share."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmpool.errors import InvalidRequest

# A MIME type the pool inlines, compared lower-cased: image/<subtype>, nothing else.
MIME_RE = re.compile(r"image/[a-z0-9][a-z0-9.+-]{0,63}")


@dataclass(frozen=True)
class MediaPolicy:
    """The `media` section; its defaults live in `MediaSchema` only.

    `allowed_dirs` are absolute paths as configured; their symlinks are resolved at each
    check. `http_timeout_s` bounds one whole fetch: connecting, every redirect, every send
    and receive (a name lookup is bounded by the system resolver; time it takes counts).
    """

    max_image_bytes: int
    allowed_dirs: tuple[str, ...]
    allow_http: bool
    allow_private_http: bool
    http_timeout_s: float
    max_redirects: int
    max_images_per_request: int


def too_large(policy: MediaPolicy) -> InvalidRequest:
    return InvalidRequest(f"image is larger than media.max_image_bytes ({policy.max_image_bytes} bytes)")
