"""deploy/kubernetes: schema-valid manifests that agree with each other and with optkit.

Three kinds of check, none needing a cluster:

- every manifest validates against the Kubernetes API's JSON schema in strict mode
  (``kubernetes-validate``: unknown fields, wrong types and missing required fields fail),
  for the oldest release the manifests target (1.30: the ``preStop.sleep`` action) and the
  newest the package knows;
- the manifests agree with each other (ports, names, selectors, the config mount) and with
  optkit's CLI and config loader;
- the probe and scrape paths answer on a real stack (``optkit serve`` processes on
  127.0.0.1) started with the ConfigMap's own service config.
"""

from __future__ import annotations

import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from optkit._config import load_config
from optkit.cli import build_parser
from optkit.service import launch_stack

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
OLDEST = "1.30.0"  # lifecycle.preStop.sleep is on by default from 1.30
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def _manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((KUBE / name).read_text()) if doc]


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _manifests() if d["kind"] == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _arg(container: dict[str, Any], flag: str) -> str:
    args = container["args"]
    return args[args.index(flag) + 1]


def _config_map_yaml() -> str:
    return _by_kind("ConfigMap")["optkit-service-config"]["data"]["service.yaml"]


def test_kustomization_lists_every_manifest_and_the_image_placeholder() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    on_disk = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    (image,) = kustomization["images"]
    for deployment in _by_kind("Deployment").values():
        assert _container(deployment)["image"].split(":")[0] == image["name"]


@pytest.mark.parametrize("version", [OLDEST, kubernetes_validate.latest_version()])
def test_every_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    docs = _manifests()
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Deployment",
                                                "PodDisruptionBudget", "Service", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any violation


def test_the_schema_check_can_fail() -> None:
    """A misspelt probe field is refused (strict mode), so the check above means something."""
    deployment = _by_kind("Deployment")["optkit-model-server"]
    _container(deployment)["readinessProbe"]["httpGet"]["pth"] = "/v2/health/ready"
    with pytest.raises(kubernetes_validate.ValidationError, match="pth"):
        kubernetes_validate.validate(deployment, OLDEST, strict=True)


def test_ports_names_and_selectors_agree() -> None:
    deployments, services = _by_kind("Deployment"), _by_kind("Service")
    assert deployments["optkit-model-server"]["spec"]["replicas"] == 2
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        container = _container(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        listen = int(_arg(container, "--port"))
        assert ports == {"http": listen} and _arg(container, "--host") == "0.0.0.0"
        for probe in PROBES:
            assert container[probe]["httpGet"]["port"] in ("http", listen), (name, probe)
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == listen
        service = services[name]
        assert service["spec"]["selector"].items() <= labels.items()
        (service_port,) = service["spec"]["ports"]
        assert service_port["targetPort"] in ("http", listen)
        # non-root, nothing to escalate, requests and limits set
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    # the gateway's upstream is the model servers' Service, on its port
    upstream = urlsplit(_arg(_container(deployments["optkit-gateway"]), "--upstream"))
    model_service = services["optkit-model-server"]
    assert upstream.hostname == model_service["metadata"]["name"]
    assert upstream.port == model_service["spec"]["ports"][0]["port"]
    pdb = _by_kind("PodDisruptionBudget")["optkit-model-server"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        deployments["optkit-model-server"]["spec"]["template"]["metadata"]["labels"].items()


def test_containers_run_optkit_commands_with_the_config_map() -> None:
    """Each container's command line parses as optkit's CLI; --config is the mounted key."""
    config_maps = _by_kind("ConfigMap")
    for deployment in _by_kind("Deployment").values():
        container = _container(deployment)
        assert container["command"] == ["optkit"]
        args = build_parser().parse_args(container["args"])
        assert args.command == "serve", shlex.join(container["args"])
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [m for m in container["volumeMounts"]
                    if Path(args.config).parent == Path(m["mountPath"])]
        source = volumes[mount["name"]]["configMap"]["name"]
        assert Path(args.config).name in config_maps[source]["data"]


def test_config_map_is_integrated_yaml_and_loads_with_optkits_loader() -> None:
    mapped = load_config(yaml.safe_load(_config_map_yaml()))
    assert mapped == load_config(ROOT / "experiments" / "integrated.yaml")
    assert mapped.loading.mode == "background"  # why the startup probe waits on readiness


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_probe_and_scrape_paths_answer_on_a_stack_with_the_config_map(repository: Path) -> None:
    """Real processes with the ConfigMap's config: every probe path 200, /metrics Prometheus."""
    deployments = _by_kind("Deployment")
    tiers = {"model-server": deployments["optkit-model-server"],
             "gateway": deployments["optkit-gateway"]}
    with launch_stack(yaml.safe_load(_config_map_yaml()), repository=repository) as stack:
        urls = {"model-server": stack.model_server_url, "gateway": stack.gateway_url}
        for tier, deployment in tiers.items():
            container = _container(deployment)
            for probe in PROBES:
                path = container[probe]["httpGet"]["path"]
                deadline = time.monotonic() + 30  # a startup probe's budget, well within 120 s
                status, kind, body = _get(urls[tier] + path)
                while status != 200 and time.monotonic() < deadline:
                    time.sleep(0.2)
                    status, kind, body = _get(urls[tier] + path)
                assert status == 200, (tier, probe, path, body[:200])
            scrape = deployment["spec"]["template"]["metadata"]["annotations"]
            status, kind, body = _get(urls[tier] + scrape["prometheus.io/path"])
            assert status == 200 and kind.startswith("text/plain") and b"# TYPE " in body


SIDECAR = KUBE / "sidecar" / "gateway-sidecar.yaml"


def _sidecar() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(SIDECAR.read_text()) if d}


@pytest.mark.parametrize("version", [OLDEST, kubernetes_validate.latest_version()])
def test_the_sidecar_example_validates_against_the_kubernetes_schema(version: str) -> None:
    """docs/your-service.md's pod (the gateway beside a team's server) is a valid manifest."""
    docs = _sidecar()
    assert sorted(docs) == ["ConfigMap", "Deployment", "Service"]
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_sidecar_gateway_fronts_its_neighbour_on_loopback() -> None:
    """The gateway's command parses as optkit's CLI, its config loads with optkit's loader,
    its upstream is the neighbour container's loopback port, and the Service reaches only
    the gateway."""
    docs = _sidecar()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    gateway, server = pod["containers"]
    assert gateway["name"] == "gateway" and server["name"] == "model-server"
    args = build_parser().parse_args(gateway["args"])
    assert args.command == "serve" and args.kind == "gateway"
    (mount,) = [m for m in gateway["volumeMounts"] if m["mountPath"] == str(Path(args.config).parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = docs["ConfigMap"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    config = load_config(yaml.safe_load(config_map["data"][Path(args.config).name]))
    assert config.pooling.enabled and config.batching.enabled
    assert "digits-sklearn" in config.gateway.models
    env = {e["name"]: e["value"] for e in server["env"]}
    upstream = urlsplit(args.upstream)
    assert upstream.hostname == env["MLSERVER_HOST"] == "127.0.0.1"
    assert upstream.port == int(env["MLSERVER_HTTP_PORT"])
    (port,) = docs["Service"]["spec"]["ports"]
    assert port["targetPort"] == "http" and gateway["ports"][0]["containerPort"] == int(args.port)
    stops = [c["lifecycle"]["preStop"]["sleep"]["seconds"] for c in (gateway, server)]
    assert stops[0] + config.server.shutdown_timeout_s <= stops[1]  # it outlives the drain
