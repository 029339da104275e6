"""systemd/llm-pool.service: systemd's own checker accepts it, the sandbox is there, and
the exposure score the README records is the one `systemd-analyze security` gives.

The unit names /opt/llm-pool, which does not exist here: `verify` checks that ExecStart=
and ExecStartPost= are executables, so the copy it checks points at this checkout
instead (where `make` built .venv), which makes that check mean something.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "llm-pool.service"
INSTALL_DIR = "/opt/llm-pool"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def directives(text: str, section: str = "Service") -> list[tuple[str, str]]:
    """(key, value) pairs of one section in order; keys may repeat (DeviceAllow=)."""
    pairs: list[tuple[str, str]] = []
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def checkout_copy(tmp_path: Path, text: str | None = None) -> Path:
    text = (text or UNIT.read_text()).replace(INSTALL_DIR, str(ROOT))
    path = tmp_path / "llm-pool.service"  # verify wants the unit's own name
    path.write_text(text)
    return path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    # Not a skip: `make test` installs it (Debian: systemd), so missing is a failure.
    assert SYSTEMD_ANALYZE is not None, "systemd-analyze is missing (`make test` apt-installs systemd)"
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    result = analyze("verify", str(checkout_copy(tmp_path)))
    # verify exits 0 on unknown keys and bad values and only prints them: no output at all.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_report_a_mistyped_sandbox_key(tmp_path: Path) -> None:
    """What the test above relies on: a bad value or key is reported, not silently taken."""
    text = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strictest\nProtectSystm=strict")
    result = analyze("verify", str(checkout_copy(tmp_path, text)))
    output = result.stdout + result.stderr
    assert "Failed to parse protect system value" in output
    assert "Unknown key" in output and "ProtectSystm" in output


def test_the_sandbox_keys_are_set() -> None:
    service = directives(UNIT.read_text())
    settings = dict(service)
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "NoNewPrivileges": "true",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "PrivateDevices": "false",  # true would hide /dev/nvidia*
        "DevicePolicy": "closed",
        "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true",
        "ProtectKernelLogs": "true",
        "ProtectControlGroups": "true",
        "ProtectClock": "true",
        "ProtectHostname": "true",
        "RestrictNamespaces": "true",
        "RestrictRealtime": "true",
        "RestrictSUIDSGID": "true",
        "LockPersonality": "true",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
        "KillMode": "mixed",
    }
    assert {key: settings.get(key) for key in expected} == expected
    devices = [value for key, value in service if key == "DeviceAllow"]
    assert devices == [
        "char-nvidia rw",
        "char-nvidia-frontend rw",
        "char-nvidia-uvm rw",
        "char-nvidia-caps r",
    ]
    filters = [value for key, value in service if key == "SystemCallFilter"]
    assert filters == ["@system-service", "~@privileged"]
    # Writable: only the state and cache directories systemd creates for the unit.
    assert "ReadWritePaths" not in settings
    assert (settings["StateDirectory"], settings["CacheDirectory"]) == ("llm-pool", "llm-pool")
    # Left out on purpose (GPU runtimes JIT-compile), and the unit says why.
    assert "MemoryDenyWriteExecute" not in settings
    assert "# - MemoryDenyWriteExecute=: JIT compilers" in UNIT.read_text()


def test_it_starts_the_pool_as_make_run_does() -> None:
    settings = dict(directives(UNIT.read_text()))
    make_run = re.search(r"^run: .*\n\t\$\(VENV\)/bin/(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert make_run is not None
    assert settings["ExecStart"] == f"{INSTALL_DIR}/.venv/bin/{make_run.group(1)}"
    assert settings["WorkingDirectory"] == INSTALL_DIR


def test_the_readme_records_the_exposure_score(tmp_path: Path) -> None:
    result = analyze("security", "--offline=true", str(checkout_copy(tmp_path)))
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for llm-pool\.service: (\d+\.\d) (\w+)", result.stdout)
    assert found, result.stdout[-2000:]
    score, label = found.groups()
    readme = (ROOT / "README.md").read_text()
    recorded = re.search(r"systemd (\d+)\):\s+overall\s+exposure\s+\*\*(\d+\.\d) (\w+)\*\*", readme)
    assert recorded, "README: '(systemd N): overall exposure **X.Y LABEL**'"
    assert "systemd-analyze security --offline=true systemd/llm-pool.service" in readme
    version = analyze("--version").stdout.split()[1]
    if version == recorded.group(1):
        assert (score, label) == recorded.group(2, 3), "the sandbox changed: update the README's score"
    else:  # another systemd weighs the checks differently; the verdict must still hold
        assert label in ("PERFECT", "SAFE", "OK"), (version, score, label)


ROUTER_UNIT = ROOT / "systemd" / "llm-pool-router.service"


def test_the_router_unit_verifies_and_runs_the_tested_flags(tmp_path: Path) -> None:
    """systemd/llm-pool-router.service (issue 22): clean under `systemd-analyze verify`
    (its binary is made to exist in a copy), and it starts vllm-router with the flags
    tests/integration/test_router.py runs."""
    from tests.integration.test_router import ROUTER_FLAGS

    text = ROUTER_UNIT.read_text()
    binary = tmp_path / "vllm-router"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    env = tmp_path / "router.env"
    env.write_text("POOLS=http://127.0.0.1:1\n")
    copy = tmp_path / "llm-pool-router.service"
    copy.write_text(
        text.replace("/opt/llm-pool/.venv-router/bin/vllm-router", str(binary)).replace(
            "/etc/llm-pool/router.env", str(env)
        )
    )
    result = analyze("verify", str(copy))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    [start] = [v for k, v in directives(text.replace("\\\n", " ")) if k == "ExecStart"]
    words = start.split()
    for flag, value in zip(ROUTER_FLAGS[::2], ROUTER_FLAGS[1::2], strict=True):
        if flag == "--worker-startup-timeout-secs":
            continue  # a box loads for longer than a test pool
        assert words[words.index(flag) + 1] == value, flag
