"""The media policy: which image URLs a request may carry, and their bytes inlined.

`inline_images` runs at admission (`Pool.submit`), after the model's own rules and before
the job is queued. It replaces every image URL with a `data:image/...;base64,` URL or
refuses the request, so a backend only ever sees data URLs and the policy holds for every
backend alike:

- `data:` must be `data:image/<type>;base64,<strict base64>`, decoded size at most
  `media.max_image_bytes`;
- `file:` only for regular files inside `media.allowed_dirs` once symlinks and `..` are
  resolved (none by default);
- `http:` / `https:` only with `media.allow_http`, never to a non-public address unless
  `media.allow_private_http` (see `llmpool.media.fetch`);
- any other scheme is refused.

Refusals of where an image may come from are `MediaForbidden` (403 `media_forbidden`); a
URL or an image that is malformed, too large, missing or unreachable is `InvalidRequest`
(400 `invalid_request`). Each message names the rule that refused.
"""

from __future__ import annotations

import base64
import dataclasses
import mimetypes
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from typing import Any

from llmpool.errors import ConfigError, InvalidRequest, MediaForbidden
from llmpool.generation import Content, GenerationRequest
from llmpool.greenbridge import call_blocking
from llmpool.media.fetch import SYSTEM_NETWORK, Network, fetch_image
from llmpool.media.policy import MIME_RE, MediaPolicy, too_large

__all__ = ["MediaPolicy", "Network", "SYSTEM_NETWORK", "inline_images", "inline_url", "policy_from_settings"]

# Magic numbers of the formats vision runtimes read; a file's type comes from its bytes
# first and its extension only when these do not tell.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def policy_from_settings(media: Mapping[str, Any]) -> MediaPolicy:
    """The `media` settings section (validated by `MediaSchema`) as a policy.

    `allowed_dirs` must be absolute: the loader resolves relative ones against the
    settings file. Raises ConfigError for a relative one (settings built by hand).
    """
    dirs = tuple(str(d) for d in media["allowed_dirs"])
    relative = [d for d in dirs if not os.path.isabs(d)]
    if relative:
        raise ConfigError(f"media.allowed_dirs must be absolute here: {', '.join(relative)}")
    return MediaPolicy(**{**media, "allowed_dirs": dirs})


def inline_images(
    request: GenerationRequest, policy: MediaPolicy, network: Network = SYSTEM_NETWORK
) -> GenerationRequest:
    """`request` with every image URL replaced by a data URL; the request itself when it
    has no images.

    Waits while files are read (on the hub's threadpool) and URLs fetched (on gevent
    sockets in the calling greenlet): on the hub only the calling greenlet waits. Never
    call it inside `call_blocking`, whose real threads cannot use the hub's sockets.
    Raises MediaForbidden or InvalidRequest on the first image refused.
    """
    if not request.has_images:
        return request
    count = sum(
        1
        for content in [request.input, *(m.content for m in request.messages or ())]
        if isinstance(content, list)
        for item in content
        if item.get("type") == "image_url"
    )
    if count > policy.max_images_per_request:
        raise InvalidRequest(
            f"{count} images in one request; media.max_images_per_request is {policy.max_images_per_request}"
        )
    done: dict[str, str] = {}  # the same URL twice in one request is read once

    def inline(content: Content) -> Content:
        if isinstance(content, str):
            return content
        items = []
        for item in content:
            if item.get("type") == "image_url":
                url = str(item["image_url"]["url"])
                if url not in done:
                    done[url] = inline_url(url, policy, network)
                item = {**item, "image_url": {**item["image_url"], "url": done[url]}}
            items.append(item)
        return items

    messages = request.messages
    if messages is not None:
        messages = tuple(dataclasses.replace(m, content=inline(m.content)) for m in messages)
    content = None if request.input is None else inline(request.input)
    return dataclasses.replace(request, input=content, messages=messages)


def inline_url(url: str, policy: MediaPolicy, network: Network = SYSTEM_NETWORK) -> str:
    """One image URL as a checked data URL; see `inline_images` for what waits and raises."""
    scheme, colon, _ = url.partition(":")
    scheme = scheme.lower()
    if not colon or not re.fullmatch(r"[a-z][a-z0-9+.-]{0,15}", scheme):
        raise InvalidRequest("image URL has no scheme; use data:, file: or http(s):")
    if scheme == "data":
        return check_data_url(url, policy)
    if scheme == "file":
        data, mime = call_blocking(read_file, url, policy)
    elif scheme in ("http", "https"):
        data, mime = fetch_image(url, policy, network)
    else:
        raise MediaForbidden(f"image URL scheme '{scheme}:' is not allowed (only data:, file: and http(s):)")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _split_data_url(url: str) -> tuple[str, str]:
    """(mime, base64 payload) of a `data:<mime>[;params];base64,<data>` URL."""
    head, comma, payload = url[len("data:") :].partition(",")
    params = [p.strip().lower() for p in head.split(";")]
    if url[:5].lower() != "data:" or not comma or len(params) < 2 or params[-1] != "base64":
        raise InvalidRequest("image data URL must be base64: data:image/<type>;base64,<data>")
    return params[0], payload


def _b64(payload: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character
        raise InvalidRequest("image data URL is not valid base64") from None


def decode_data_url(url: str) -> bytes:
    """The bytes of a base64 data URL (for a backend that needs them; admission has
    checked the URL against the policy already)."""
    return _b64(_split_data_url(url)[1])


def check_data_url(url: str, policy: MediaPolicy) -> str:
    """`url` if it is a base64 image data URL within the size cap, in canonical form
    (`data:<mime>;base64,<data>`, parameters dropped); else InvalidRequest."""
    mime, payload = _split_data_url(url)
    if not MIME_RE.fullmatch(mime):
        raise InvalidRequest(f"image data URL has type '{mime[:64]}'; an image/* type is required")
    # 4 characters per 3 bytes: refuse a payload that cannot fit before decoding it.
    if len(payload) > 4 * ((policy.max_image_bytes + 2) // 3):
        raise too_large(policy)
    data = _b64(payload)
    if not data:
        raise InvalidRequest("image data URL is empty")
    if len(data) > policy.max_image_bytes:
        raise too_large(policy)
    return f"data:{mime};base64,{payload}"


def read_file(url: str, policy: MediaPolicy) -> tuple[bytes, str]:
    """The bytes and MIME type of a `file:` image URL inside `media.allowed_dirs`.

    Blocks on the file system: call it through `call_blocking`. A path outside the
    allowed directories is refused whether or not it exists, so the answer says nothing
    about files there.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query:
        raise InvalidRequest("file: image URLs take an absolute path only: file:///dir/image.png")
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/") or "\x00" in path:
        raise InvalidRequest("file: image URLs take an absolute path only: file:///dir/image.png")
    if not policy.allowed_dirs:
        raise MediaForbidden("file: image URLs are off: media.allowed_dirs is empty")
    real = os.path.realpath(path)  # follows every symlink and '..' that exists
    if not _inside_allowed(real, policy):
        raise MediaForbidden(f"file '{path}' is outside media.allowed_dirs")
    data = _read_regular_file(real, path, policy)
    mime = next((m for magic, m in _MAGIC if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    mime = mime or mimetypes.guess_type(real)[0] or ""
    if not MIME_RE.fullmatch(mime):
        raise InvalidRequest(f"file '{path}' is not an image (type '{mime or 'unknown'}')")
    return data, mime


def _inside_allowed(real: str, policy: MediaPolicy) -> bool:
    # Each allowed directory is resolved now, not at start-up: the policy follows the
    # directories (and symlinks among them) as they are when the request comes.
    for allowed in policy.allowed_dirs:
        root = os.path.realpath(allowed)
        if os.path.commonpath([real, root]) == root:
            return True
    return False


def _opened_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _read_regular_file(real: str, shown: str, policy: MediaPolicy) -> bytes:
    """Up to the cap from the regular file `real`.

    O_NOFOLLOW: a last component swapped for a symlink after the check fails instead of
    being followed; O_NONBLOCK: a FIFO cannot hang the open.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise InvalidRequest(f"file '{shown}' does not exist") from None
    except OSError as exc:
        raise InvalidRequest(f"file '{shown}' cannot be read: {exc.strerror}") from None
    try:
        # A directory on the way swapped for a symlink between the check and the open
        # would lead elsewhere: check what was actually opened (Linux names it in /proc).
        opened = _opened_path(fd)
        if opened is not None and not _inside_allowed(opened, policy):
            raise MediaForbidden(f"file '{shown}' is outside media.allowed_dirs")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidRequest(f"file '{shown}' is not a regular file")
        if info.st_size > policy.max_image_bytes:
            raise too_large(policy)
        data = b""
        while len(data) <= policy.max_image_bytes:  # the file may have grown since fstat
            chunk = os.read(fd, policy.max_image_bytes + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > policy.max_image_bytes:
        raise too_large(policy)
    if not data:
        raise InvalidRequest(f"file '{shown}' is empty")
    return data
