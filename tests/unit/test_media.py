"""The media policy (llmpool.media): data URLs, files, and http(s) fetches against a real
server on 127.0.0.1, with a stubbed resolver where a public name is needed."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmpool.config.loader import load_settings
from llmpool.config.schema import MediaSchema
from llmpool.errors import InvalidRequest, MediaForbidden, PoolError
from llmpool.generation import GenerationRequest, Message
from llmpool.media import MediaPolicy, Network, inline_images, inline_url, policy_from_settings
from llmpool.media.fetch import address_refusal
from tests.media_server import (
    PNG,
    PNG_DATA_URL,
    ImageServer,
    claims_length,
    drip,
    endless,
    image,
    redirect,
    self_signed,
)

PUBLIC = "93.184.215.14"  # any globally routable address; the tests never reach it


def policy(**media: Any) -> MediaPolicy:
    """A policy from a `media` section, through the settings schema (its defaults)."""
    return policy_from_settings(MediaSchema().load(media))


def refused(url: str, media: MediaPolicy, network: Network | None = None) -> PoolError:
    with pytest.raises(PoolError) as info:
        inline_url(url, media, network or Network())
    assert isinstance(info.value, MediaForbidden | InvalidRequest)
    return info.value


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer() as s:
        s.routes["/pic.png"] = image()
        yield s


class Resolver:
    """A stub DNS: `answers[name]` lists its answers to successive lookups of `name` (the
    last one repeats); each answer is an address or a list of them. Records every lookup."""

    def __init__(self, answers: dict[str, list[str | list[str]]]) -> None:
        self.answers = answers
        self.names: list[str] = []

    def __call__(self, host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
        self.names.append(host)
        sequence = self.answers[host]
        answer = sequence[min(self.names.count(host), len(sequence)) - 1]
        ips = answer if isinstance(answer, list) else [answer]
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, (ip, port)) for ip in ips]


# -- data URLs -----------------------------------------------------------------------------
def test_a_base64_image_data_url_passes_in_canonical_form() -> None:
    assert inline_url(PNG_DATA_URL, policy()) == PNG_DATA_URL
    payload = base64.b64encode(PNG).decode()
    assert inline_url(f"DATA:Image/PNG;name=a.png;base64,{payload}", policy()) == PNG_DATA_URL


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("data:text/plain;base64,aGk=", "an image/* type is required"),
        ("data:;base64,aGk=", "an image/* type is required"),
        ("data:image/png,rawbytes", "must be base64"),
        ("data:image/png;base64", "must be base64"),
        ("data:image/png;base64,AAA", "not valid base64"),
        ("data:image/png;base64,AA!A", "not valid base64"),
        ("data:image/png;base64,AAAA\nAAAA", "not valid base64"),
        ("data:image/png;base64,AAAAé", "not valid base64"),
        ("data:image/png;base64,", "empty"),
    ],
)
def test_malformed_data_urls_are_invalid_requests(url: str, says: str) -> None:
    error = refused(url, policy())
    assert isinstance(error, InvalidRequest) and says in error.message


def test_a_data_url_over_max_image_bytes_is_refused_and_one_at_the_cap_passes() -> None:
    cap = policy(max_image_bytes=100)
    assert inline_url(data_url(b"x" * 100), cap) == data_url(b"x" * 100)
    for size in (101, 102, 10_000):  # 101: caught after decoding; 10 000: before
        error = refused(data_url(b"x" * size), cap)
        assert isinstance(error, InvalidRequest)
        assert error.message == "image is larger than media.max_image_bytes (100 bytes)"


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "gopher://x/", "javascript:alert(1)", "blob:x"])
def test_other_schemes_are_forbidden(url: str) -> None:
    error = refused(url, policy(allow_http=True, allowed_dirs=["/"]))
    assert isinstance(error, MediaForbidden) and "only data:, file: and http(s):" in error.message


def test_a_url_without_scheme_is_invalid() -> None:
    assert isinstance(refused("/etc/passwd", policy()), InvalidRequest)


# -- files ---------------------------------------------------------------------------------
@pytest.fixture
def images(tmp_path: Path) -> Path:
    """tmp/images/pic.png (allowed) beside tmp/secret/key.png (not)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "pic.png").write_bytes(PNG)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.png").write_bytes(PNG)
    return tmp_path / "images"


def test_a_file_inside_allowed_dirs_is_inlined_with_the_type_of_its_bytes(images: Path) -> None:
    (images / "photo.bin").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)  # JPEG magic
    (images / "icon.webp").write_bytes(b"RIFF\0\0\0\0WEBPVP8 ")
    allowed = policy(allowed_dirs=[str(images)])
    assert inline_url(f"file://{images}/pic.png", allowed) == PNG_DATA_URL
    assert inline_url(f"file://localhost{images}/pic.png", allowed) == PNG_DATA_URL
    assert inline_url(f"file://{images}/photo.bin", allowed).startswith("data:image/jpeg;base64,/9j/")
    assert inline_url(f"file://{images}/icon.webp", allowed).startswith("data:image/webp;base64,")
    # Percent-encoding is decoded before the path is resolved.
    (images / "a b.png").write_bytes(PNG)
    assert inline_url(f"file://{images}/a%20b.png", allowed) == PNG_DATA_URL


def test_files_are_forbidden_when_no_dir_is_allowed(images: Path) -> None:
    error = refused(f"file://{images}/pic.png", policy())
    assert isinstance(error, MediaForbidden)
    assert error.message == "file: image URLs are off: media.allowed_dirs is empty"


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "{images}/../secret/key.png",
        "{images}/%2e%2e/secret/key.png",
        "{images}/%2E%2E/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "{images}/..%2fsecret%2fkey.png",
        "{images}-evil/pic.png",  # a prefix of the allowed dir is not inside it
        "{images}/../secret/missing.png",  # refused alike whether it exists or not
    ],
)
def test_traversal_out_of_allowed_dirs_is_forbidden(images: Path, path: str) -> None:
    (images.parent / "images-evil").mkdir()
    (images.parent / "images-evil" / "pic.png").write_bytes(PNG)
    error = refused("file://" + path.format(images=images), policy(allowed_dirs=[str(images)]))
    assert isinstance(error, MediaForbidden) and "is outside media.allowed_dirs" in error.message


def test_a_symlink_out_of_an_allowed_dir_is_forbidden_and_one_within_is_followed(images: Path) -> None:
    (images / "escape.png").symlink_to(images.parent / "secret" / "key.png")
    (images / "up").symlink_to(images.parent)
    (images / "alias.png").symlink_to(images / "pic.png")
    allowed = policy(allowed_dirs=[str(images)])
    for url in (f"file://{images}/escape.png", f"file://{images}/up/secret/key.png"):
        error = refused(url, allowed)
        assert isinstance(error, MediaForbidden) and "outside media.allowed_dirs" in error.message
    assert inline_url(f"file://{images}/alias.png", allowed) == PNG_DATA_URL


def test_an_allowed_dir_that_is_a_symlink_allows_its_target(images: Path) -> None:
    (images.parent / "link").symlink_to(images)
    allowed = policy(allowed_dirs=[str(images.parent / "link")])
    assert inline_url(f"file://{images}/pic.png", allowed) == PNG_DATA_URL
    assert inline_url(f"file://{images.parent}/link/pic.png", allowed) == PNG_DATA_URL


def test_unreadable_or_unsuitable_files_are_invalid_requests(images: Path) -> None:
    allowed = policy(allowed_dirs=[str(images)], max_image_bytes=len(PNG))
    (images / "big.png").write_bytes(PNG + b"\0")
    (images / "notes.txt").write_text("hello")
    (images / "empty.png").write_bytes(b"")
    os.mkfifo(images / "pipe.png")  # opening it must neither block nor read
    cases = {
        "missing.png": "does not exist",
        "big.png": "larger than media.max_image_bytes",
        "notes.txt": "is not an image (type 'text/plain')",
        "empty.png": "is empty",
        "pipe.png": "not a regular file",
        "": "not a regular file",  # the directory itself
    }
    for name, says in cases.items():
        error = refused(f"file://{images}/{name}", allowed)
        assert isinstance(error, InvalidRequest) and says in error.message, (name, error.message)


@pytest.mark.parametrize("url", ["file://otherhost/etc/passwd", "file:relative.png", "file:///a.png?x=1"])
def test_file_urls_take_an_absolute_local_path_only(url: str) -> None:
    error = refused(url, policy(allowed_dirs=["/"]))
    assert isinstance(error, InvalidRequest) and "absolute path only" in error.message


def test_relative_allowed_dirs_resolve_against_the_settings_file(write_settings: Any, tmp_path: Path) -> None:
    write_settings({"media": {"allowed_dirs": ["images", "/srv/shared/../pics"]}})
    media = load_settings().media
    assert media.allowed_dirs == (str(tmp_path / "images"), "/srv/pics")
    assert media.max_redirects == 3
    with pytest.raises(PoolError, match="must be absolute"):
        policy_from_settings({**dataclasses.asdict(media), "allowed_dirs": ["images"]})


# -- addresses -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback (it carries 127.0.0.1)"),
        ("::ffff:169.254.169.254", "link-local (it carries 169.254.169.254)"),
        ("2002:a00:1::", "private (it carries 10.0.0.1)"),  # 6to4
        ("64:ff9b::a9fe:a9fe", "link-local (it carries 169.254.169.254)"),  # NAT64
    ],
)
def test_non_public_addresses_are_named(address: str, kind: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


# -- http(s) -------------------------------------------------------------------------------
def test_http_is_off_by_default(server: ImageServer) -> None:
    error = refused(server.url("/pic.png"), policy())
    assert isinstance(error, MediaForbidden)
    assert error.message == "http(s) image URLs are off: media.allow_http is false"
    assert server.paths == []


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("127.0.0.1", "address 127.0.0.1 is loopback"),
        ("localhost", "address 127.0.0.1 (of 'localhost') is loopback"),
        ("[::1]", "address ::1 is loopback"),
        ("2130706433", "address 127.0.0.1 is loopback"),  # decimal
        ("0x7f000001", "address 127.0.0.1 is loopback"),  # hex
        ("0x7f.1", "address 127.0.0.1 is loopback"),
        ("0177.0.0.1", "address 127.0.0.1 is loopback"),  # octal
        ("127.1", "address 127.0.0.1 is loopback"),
        ("[::ffff:127.0.0.1]", "address ::ffff:7f00:1 is loopback (it carries 127.0.0.1)"),
        ("[::ffff:7f00:1]", "address ::ffff:7f00:1 is loopback (it carries 127.0.0.1)"),
        ("0", "address 0.0.0.0 is unspecified"),
        ("[::]", "address :: is unspecified"),
    ],
)
def test_the_local_server_is_refused_in_every_spelling(server: ImageServer, host: str, says: str) -> None:
    error = refused(server.url("/pic.png", host=host), policy(allow_http=True))
    assert isinstance(error, MediaForbidden)
    assert error.message.startswith(says) and error.message.endswith("; media.allow_private_http is false")
    assert server.paths == []  # refused before any connection


def test_cloud_metadata_is_refused() -> None:
    error = refused("http://169.254.169.254/latest/meta-data/", policy(allow_http=True))
    assert error.message == "address 169.254.169.254 is link-local; media.allow_private_http is false"


def test_allow_private_http_lets_the_local_server_serve(server: ImageServer) -> None:
    allowed = policy(allow_http=True, allow_private_http=True)
    assert inline_url(server.url("/pic.png"), allowed) == PNG_DATA_URL
    server.routes["/photo"] = image(b"\xff\xd8\xff" + b"\0" * 9, "image/JPEG; charset=binary", length=False)
    assert inline_url(server.url("/photo"), allowed) == data_url(b"\xff\xd8\xff" + b"\0" * 9, "image/jpeg")
    assert server.seen[0].host == f"127.0.0.1:{server.port}"


def test_rebinding_is_refused_by_connecting_to_the_checked_address(server: ImageServer) -> None:
    # First answer public, every later one loopback: a fetch that resolved again to
    # connect would reach the loopback server; this one connects to the address it checked.
    dns = Resolver({"images.example": [PUBLIC, "127.0.0.1"]})
    asked, connect = server.connect_instead()
    network = Network(resolve=dns, connect=connect)
    allowed = policy(allow_http=True)
    assert inline_url("http://images.example/pic.png", allowed, network) == PNG_DATA_URL
    assert dns.names == ["images.example"]  # resolved once
    assert asked == [(PUBLIC, 80)]  # connected to the checked address
    assert server.seen[0].host == "images.example"  # named the host it asked for
    # The next lookup answers loopback: that fetch is refused before connecting.
    error = refused("http://images.example/pic.png", allowed, network)
    assert (
        error.message
        == "address 127.0.0.1 (of 'images.example') is loopback; media.allow_private_http is false"
    )
    assert len(asked) == 1


def test_every_address_a_name_resolves_to_is_checked(server: ImageServer) -> None:
    asked, connect = server.connect_instead()
    network = Network(resolve=Resolver({"mixed.example": [[PUBLIC, "10.0.0.7"]]}), connect=connect)
    error = refused("http://mixed.example/pic.png", policy(allow_http=True), network)
    assert "address 10.0.0.7 (of 'mixed.example') is private" in error.message
    assert asked == []


def test_a_redirect_to_a_private_address_is_refused(server: ImageServer) -> None:
    asked, connect = server.connect_instead()
    dns = Resolver({"images.example": [PUBLIC], "internal.example": ["10.0.0.7"]})
    network = Network(resolve=dns, connect=connect)
    server.routes["/to-loopback"] = redirect(server.url("/pic.png"))
    server.routes["/to-internal"] = redirect("http://internal.example/pic.png", status=307)
    allowed = policy(allow_http=True)
    error = refused("http://images.example/to-loopback", allowed, network)
    assert error.message == "address 127.0.0.1 is loopback; media.allow_private_http is false"
    error = refused("http://images.example/to-internal", allowed, network)
    assert (
        error.message
        == "address 10.0.0.7 (of 'internal.example') is private; media.allow_private_http is false"
    )
    assert server.paths == ["/to-loopback", "/to-internal"]  # never /pic.png


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ("file:///etc/passwd", "redirects to a 'file:' URL"),
        ("ftp://example.com/a.png", "redirects to a 'ftp:' URL"),
        ("data:image/png;base64,AAAA", "redirects to a 'data:' URL"),
    ],
)
def test_a_redirect_off_http_is_refused(server: ImageServer, location: str, says: str) -> None:
    server.routes["/away"] = redirect(location)
    error = refused(server.url("/away"), policy(allow_http=True, allow_private_http=True))
    assert isinstance(error, MediaForbidden) and says in error.message


def test_redirects_are_followed_up_to_max_redirects(server: ImageServer) -> None:
    server.routes["/r1"] = redirect("/r2", status=301)
    server.routes["/r2"] = redirect(server.url("/r3"), status=308)
    server.routes["/r3"] = redirect("pic.png", status=303)
    server.routes["/loop"] = redirect("/loop")
    allowed = policy(allow_http=True, allow_private_http=True, max_redirects=3)
    assert inline_url(server.url("/r1"), allowed) == PNG_DATA_URL
    assert server.paths == ["/r1", "/r2", "/r3", "/pic.png"]
    error = refused(server.url("/loop"), allowed)
    assert error.message == "image URL redirects more than media.max_redirects (3) times"
    assert server.paths[4:] == ["/loop"] * 4
    assert isinstance(
        refused(server.url("/r1"), policy(allow_http=True, allow_private_http=True, max_redirects=2)),
        InvalidRequest,
    )


def test_answers_that_are_no_image_are_invalid(server: ImageServer) -> None:
    server.routes["/page"] = image(b"<html>", "text/html")
    server.routes["/untyped"] = image(PNG, "")
    server.routes["/empty"] = image(b"")
    allowed = policy(allow_http=True, allow_private_http=True)
    assert "HTTP 404" in refused(server.url("/missing"), allowed).message
    assert "Content-Type 'text/html'; image/* is required" in refused(server.url("/page"), allowed).message
    assert "Content-Type ''" in refused(server.url("/untyped"), allowed).message
    assert "empty body" in refused(server.url("/empty"), allowed).message


def test_a_closed_port_and_an_unknown_host_are_invalid_requests() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
    allowed = policy(allow_http=True, allow_private_http=True)
    error = refused(f"http://127.0.0.1:{port}/x.png", allowed)
    assert "failed" in error.message and "refused" in error.message.lower()
    error = refused("http://nowhere.invalid/x.png", allowed)
    assert "does not resolve" in error.message


def test_the_size_cap_holds_with_and_without_content_length(server: ImageServer) -> None:
    server.routes["/claims"] = claims_length(10_000)
    server.routes["/big"] = image(PNG + b"\0" * 1000, length=False)
    server.routes["/endless"] = endless()
    capped = policy(allow_http=True, allow_private_http=True, max_image_bytes=1000, http_timeout_s=5)
    for path in ("/claims", "/big", "/endless"):
        began = time.monotonic()
        error = refused(server.url(path), capped)
        assert error.message == "image is larger than media.max_image_bytes (1000 bytes)", path
        # /claims never sends its body and /endless never ends: refused up front and
        # while reading, not at the timeout.
        assert time.monotonic() - began < 2, path


def test_http_timeout_bounds_the_whole_fetch_even_against_a_drip(server: ImageServer) -> None:
    server.routes["/drip-body"] = drip(0.05, PNG * 20)
    server.routes["/drip-headers"] = drip(0.05, headers_too=True)
    slow = policy(allow_http=True, allow_private_http=True, http_timeout_s=0.6)
    for path in ("/drip-body", "/drip-headers"):
        began = time.monotonic()
        error = refused(server.url(path), slow)
        took = time.monotonic() - began
        assert (
            error.message
            == "fetching the image from '127.0.0.1' took longer than media.http_timeout_s (0.6 s)"
        )
        # Every byte arrives well within the timeout; only the whole-fetch deadline ends it.
        assert 0.5 < took < 1.5, (path, took)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("certs")
    return {name: self_signed(directory, name) for name in ("images.test", "other.test")}


@pytest.mark.parametrize(("served", "trusted", "says"), [
    ("images.test", "images.test", None),
    ("images.test", None, "CERTIFICATE_VERIFY_FAILED"),
    ("other.test", "other.test", "Hostname mismatch"),
])  # fmt: skip
def test_https_verifies_the_certificate_for_the_urls_host(
    certs: dict[str, tuple[Path, Path]], served: str, trusted: str | None, says: str | None
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certs[served])
    client = ssl.create_default_context()
    if trusted is not None:
        client = ssl.create_default_context(cafile=str(certs[trusted][0]))
    with ImageServer(tls=context) as server:
        server.routes["/pic.png"] = image()
        network = Network(resolve=Resolver({"images.test": ["127.0.0.1"]}), tls=lambda: client)
        allowed = policy(allow_http=True, allow_private_http=True)
        url = server.url("/pic.png", host="images.test", scheme="https")
        if says is None:
            assert inline_url(url, allowed, network) == PNG_DATA_URL
            assert server.seen[0].host == f"images.test:{server.port}"
        else:
            error = refused(url, allowed, network)
            assert isinstance(error, InvalidRequest) and says in error.message


# -- whole requests ------------------------------------------------------------------------
def test_inline_images_rewrites_every_image_and_keeps_everything_else(images: Path) -> None:
    allowed = policy(allowed_dirs=[str(images)])
    url = f"file://{images}/pic.png"
    text = {"type": "text", "text": "what is this?"}
    picture = {"type": "image_url", "image_url": {"url": url, "detail": "low"}}
    request = GenerationRequest(
        messages=(
            Message("user", [text, picture]),
            Message("assistant", "a pixel"),
            Message("user", [picture]),
        )
    )
    inlined = inline_images(request, allowed)
    assert inlined.messages is not None
    assert inlined.messages[0].content == [
        text,
        {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "low"}},
    ]
    assert inlined.messages[1] == request.messages[1]
    assert inlined.messages[2].content[0]["image_url"]["url"] == PNG_DATA_URL  # type: ignore[index]
    assert picture["image_url"]["url"] == url  # the caller's request is untouched
    single = inline_images(GenerationRequest(input=[picture]), allowed)
    assert single.input == [{"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "low"}}]
    plain = GenerationRequest(input="no images here")
    assert inline_images(plain, allowed) is plain


def test_one_refused_image_refuses_the_request(images: Path) -> None:
    good = {"type": "image_url", "image_url": {"url": f"file://{images}/pic.png"}}
    bad = {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}
    with pytest.raises(MediaForbidden):
        inline_images(GenerationRequest(input=[good, bad]), policy(allowed_dirs=[str(images)]))


# -- under the worker's gevent patch -------------------------------------------------------
GEVENT_SCRIPT = r"""
from conf.worker import patch_selectively

patch_selectively()

import json
import sys
import tempfile
import time
from pathlib import Path

import gevent

from llmpool.config.schema import MediaSchema
from llmpool.greenbridge import on_hub
from llmpool.media import inline_url, policy_from_settings
from tests.media_server import PNG, PNG_DATA_URL, ImageServer, drip

ticks = 0


def ticker():
    global ticks
    while True:
        ticks += 1
        gevent.sleep(0.005)


images = Path(tempfile.mkdtemp())
(images / "pic.png").write_bytes(PNG)
media = {"allow_http": True, "allow_private_http": True, "allowed_dirs": [str(images)]}
policy = policy_from_settings(MediaSchema().load(media))
result = {"on_hub": on_hub()}
with ImageServer(threaded=False) as server:  # on a real thread: `threading` is not patched
    server.routes["/slow.png"] = drip(0.01, PNG)  # about 0.7 s for the whole body
    ticking = gevent.spawn(ticker)
    gevent.sleep(0)
    before, began = ticks, time.monotonic()
    result["fetched"] = inline_url(server.url("/slow.png"), policy) == PNG_DATA_URL
    result["fetch_s"], result["fetch_ticks"] = time.monotonic() - began, ticks - before
    result["file"] = inline_url(f"file://{images}/pic.png", policy) == PNG_DATA_URL
    ticking.kill()
print(json.dumps(result))
"""


def test_a_fetch_on_the_hub_lets_other_greenlets_run() -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT], capture_output=True, text=True, timeout=60, cwd=repo, env=env
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["on_hub"] and result["fetched"] and result["file"], result
    # A ticker every 5 ms keeps running while the fetch waits on its socket; a fetch that
    # blocked the hub would leave it at 0 or 1.
    assert result["fetch_s"] > 0.5 and result["fetch_ticks"] >= 20, result


def test_too_many_images_are_refused_before_any_is_read() -> None:
    from llmpool.errors import InvalidRequest
    from llmpool.generation import GenerationRequest

    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:  # never reached: refused first
        calls.append(host)
        return ["93.184.216.34"]

    item = {"type": "image_url", "image_url": {"url": "http://images.example/a.png"}}
    request = GenerationRequest(input=[{"type": "text", "text": "x"}, *([item] * 3)])
    strict = policy(allow_http=True, max_images_per_request=2)
    with pytest.raises(InvalidRequest) as info:
        inline_images(request, strict, Network(resolve=resolve))
    assert "media.max_images_per_request is 2" in info.value.message
    assert calls == []
