"""deploy/kubernetes/ holds what it claims (issue 22): the files parse; the pool's settings
in the ConfigMap load as the pool loads them, and a pool started from them serves every
metric the endpoint picker's engineConfigs entry names, with the type the picker reads (a
gauge); KV-cache use lies in [0, 1] where a runtime reports it and is absent, not a
made-up number, where none does (in-process llama.cpp here; vllm_serve's real value is
tests/integration/test_vllm_serve.py's). The names that tie the files together (labels,
ports, the picker's Service) agree."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ROOT, Server, start_server, stop_server

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy" / "kubernetes"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


POOL = documents("pool.yaml")
SETTINGS = json.loads(one(POOL, "ConfigMap")["data"]["settings.json"])
DEPLOYMENT = one(POOL, "Deployment")
INFERENCE_POOL = one(documents("inference-pool.yaml"), "InferencePool")
PICKER = documents("endpoint-picker.yaml")
EPP_CONFIG = yaml.safe_load(one(PICKER, "ConfigMap")["data"]["epp-config.yaml"])


def extractor() -> dict[str, Any]:
    [plugin] = [p for p in EPP_CONFIG["plugins"] if p["type"] == "core-metrics-extractor"]
    params: dict[str, Any] = plugin["parameters"]
    return params


def engine() -> dict[str, Any]:
    params = extractor()
    [entry] = [e for e in params["engineConfigs"] if e["name"] == params["defaultEngine"]]
    return entry


def test_the_files_tie_together() -> None:
    pod = DEPLOYMENT["spec"]["template"]
    labels = pod["metadata"]["labels"]
    # The InferencePool selects the pods, on the port the pool listens on.
    assert INFERENCE_POOL["apiVersion"] == "inference.networking.k8s.io/v1"
    assert INFERENCE_POOL["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [container] = pod["spec"]["containers"]
    [port] = container["ports"]
    assert [p["number"] for p in INFERENCE_POOL["spec"]["targetPorts"]] == [port["containerPort"]]
    assert SETTINGS["service"]["port"] == port["containerPort"] and SETTINGS["service"]["host"] == "0.0.0.0"
    # Ready (and sent traffic) only once the start-up loads are done.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "settings")
    assert env["LLM_POOL_SETTINGS_PATH"] == mount["mountPath"] + "/settings.json"
    # The picker's engine entry is the one the pods' label names.
    params = extractor()
    assert labels[params["engineLabelKey"]] == params["defaultEngine"] == engine()["name"] == "llm-pool"
    # The InferencePool's picker is the picker's Service and gRPC port.
    service = one(PICKER, "Service")
    ref = INFERENCE_POOL["spec"]["endpointPickerRef"]
    assert ref["name"] == service["metadata"]["name"]
    assert ref["port"]["number"] in [p["port"] for p in service["spec"]["ports"]]
    epp = one(PICKER, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = epp["args"]
    assert args[args.index("--pool-name") + 1] == INFERENCE_POOL["metadata"]["name"]
    assert args[args.index("--config-file") + 1].startswith(epp["volumeMounts"][0]["mountPath"])
    assert EPP_CONFIG["apiVersion"] == "llm-d.ai/v1alpha1" and EPP_CONFIG["kind"] == "EndpointPickerConfig"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("kubernetes"), SETTINGS, timeout_s=120)
    yield srv
    stop_server(srv)


def metric_name(spec: str) -> str:
    match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?", spec)
    assert match, spec
    return match.group(1)


def test_every_metric_the_picker_reads_is_a_gauge_of_a_live_pool(server: Server) -> None:
    requests.post(
        f"{server.url}/v1/responses", json={"model": next(iter(SETTINGS["engine"]["models"])), "input": "Hi"}
    )
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    specs = {k: v for k, v in engine().items() if k.endswith("Spec") and v}
    assert set(specs) == {"queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec"}
    for key, spec in specs.items():
        family = families.get(metric_name(spec))
        assert family is not None, f"{key}: {spec} is not in the pool's /metrics"
        assert family.type == "gauge", (spec, family.type)
    # The queue gauges have their one value; the KV gauge has none here: llama_cpp in
    # process reports no KV-cache use, and the pool makes none up.
    for key in ("queuedRequestsSpec", "runningRequestsSpec"):
        [sample] = families[metric_name(specs[key])].samples
        assert sample.value == 0
    kv = families[metric_name(specs["kvUsageSpec"])]
    assert kv.samples == []
    assert "# TYPE llmpool:kv_cache_usage_perc gauge" in text  # typed, so the picker reads it


def test_the_configmaps_settings_load_as_the_pool_loads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmpool.config.loader import LOCAL_ENV, SETTINGS_ENV, load_settings

    path = tmp_path / "settings.json"
    path.write_text(json.dumps(SETTINGS))
    monkeypatch.setenv(SETTINGS_ENV, str(path))
    monkeypatch.setenv(LOCAL_ENV, str(tmp_path / "local.json"))
    settings = load_settings()
    assert set(settings.models) == set(SETTINGS["engine"]["models"])
    assert settings.service.port == 8000
