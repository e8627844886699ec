"""deploy/k8s: every rendering (base, GPU overlay, base plus the optional components) validates against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors), and agrees with the
service: probe paths are routes of the app, CXR_* variables are settings, the shutdown budget fits in the
grace period, selectors select the pods."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.api.app import create_app
from service.metrics import Metrics
from service.server import _RESPONSE_GRACE_S
from service.settings import Settings
from tests.deploy.kustomize import load_documents, render
from tests.support.tinymodel import make_tiny_model

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
COMPONENTS = sorted(path for path in (K8S / "components").iterdir() if path.is_dir())
RENDERINGS: dict[str, tuple[Path, list[Path]]] = {
    "base": (K8S / "base", []),
    "gpu": (K8S / "overlays" / "gpu", []),
    "base+components": (K8S / "base", COMPONENTS),
    "gpu+components": (K8S / "overlays" / "gpu", COMPONENTS),
}
# The oldest Kubernetes minor still in common support and the newest schemas the package ships.
KUBERNETES_VERSIONS = ["1.31.0", kubernetes_validate.latest_version()]


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [obj["kind"] for obj in objects]
    assert len(kinds) == len(set(kinds)), kinds  # one of each kind in these manifests
    return {obj["kind"]: obj for obj in objects}


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(container)


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    repository = tmp_path_factory.mktemp("models")
    make_tiny_model(repository)
    app = create_app(Settings(model_dir=repository, providers=["CPUExecutionProvider"]))
    return {str(getattr(route, "path", "")) for route in app.routes}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", RENDERINGS)
def test_every_object_validates_against_the_kubernetes_schemas(name: str, version: str) -> None:
    directory, components = RENDERINGS[name]
    objects = render(directory, components)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(
        _by_kind(objects)
    )
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{name}: {obj['kind']} {obj['metadata']['name']} invalid for {version}: {error.message}"
            )


@pytest.mark.parametrize("name", RENDERINGS)
def test_shutdown_budget_fits_the_grace_period(name: str) -> None:
    """preStop sleep + the service's drain + its last-answer grace <= terminationGracePeriodSeconds: else
    the kubelet kills the pod mid-drain and queued requests fail."""
    objects = render(*RENDERINGS[name])
    pod = _by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    container = _container(objects)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    environment = {variable["name"]: variable.get("value") for variable in container["env"]}
    drain = float(environment.get("CXR_DRAIN_TIMEOUT_S") or Settings.model_fields["drain_timeout_s"].default)
    assert float(command[1]) + drain + _RESPONSE_GRACE_S <= pod["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("name", RENDERINGS)
def test_manifests_agree_with_the_service(name: str, routes: set[str]) -> None:
    objects = render(*RENDERINGS[name])
    kinds = _by_kind(objects)
    container = _container(objects)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes, probe
        assert container[probe]["httpGet"]["port"] in ports, probe

    environment = {variable["name"]: variable for variable in container["env"]}
    for variable in environment:
        assert variable.removeprefix("CXR_").lower() in Settings.model_fields, variable
    assert environment["CXR_HOST"]["value"] == "0.0.0.0"
    assert int(environment["CXR_PORT"]["value"]) == ports["http"]
    annotations = kinds["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert (
        int(annotations["prometheus.io/port"]) == ports["http"]
        and annotations["prometheus.io/path"] in routes
    )
    assert "cpu" in container["resources"]["requests"]  # the HPA's utilisation is relative to it

    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = kinds[kind]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] in ports
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", kinds["Deployment"]["metadata"]["name"])
    assert kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2  # the PDB can then let one go
    if "Ingress" in kinds:
        backend = kinds["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == kinds["Service"]["metadata"]["name"]
        assert backend["port"]["name"] in {port["name"] for port in kinds["Service"]["spec"]["ports"]}


def test_gpu_overlay_asks_for_a_gpu_on_gpu_nodes() -> None:
    objects = render(K8S / "overlays" / "gpu")
    container = _container(objects)
    pod = _by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith(":gpu")
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    environment = {variable["name"]: variable.get("value") for variable in container["env"]}
    assert environment["CXR_PROVIDERS"].startswith("CUDAExecutionProvider")
    assert "CXR_DRAIN_TIMEOUT_S" in environment  # inherited from the base, not lost by the patch
    assert _container(render(K8S / "base"))["image"].endswith(":cpu")


def test_queue_depth_autoscaling_uses_a_metric_the_service_exports() -> None:
    exported = set(re.findall(r"^# TYPE (\w+) ", Metrics().render().decode(), re.MULTILINE))
    objects = render(K8S / "base", [K8S / "components" / "queue-depth-autoscaling"])
    metrics = _by_kind(objects)["HorizontalPodAutoscaler"]["spec"]["metrics"]
    names = [metric["pods"]["metric"]["name"] for metric in metrics if metric["type"] == "Pods"]
    assert names == ["cxr_queue_depth"] and set(names) <= exported
    assert any(metric["type"] == "Resource" for metric in metrics)  # CPU kept alongside
    rules = yaml.safe_load(
        (K8S / "components" / "queue-depth-autoscaling" / "prometheus-adapter-rules.yaml").read_text()
    )
    (rule,) = rules["rules"]["custom"]
    assert rule["name"]["as"] == "cxr_queue_depth" and "cxr_queue_depth" in rule["seriesQuery"]


def _kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("name", RENDERINGS)
def test_python_rendering_matches_kubectl_kustomize(name: str, tmp_path: Path) -> None:
    directory, components = RENDERINGS[name]
    if components:  # a throwaway kustomization that lists the components, as an overlay would
        # kustomize refuses absolute paths here: relative ones, from the throwaway directory.
        relative = [os.path.relpath(path, tmp_path) for path in (directory, *components)]
        lines = [f"resources: [{relative[0]}]", "components:", *(f"  - {path}" for path in relative[1:])]
        (tmp_path / "kustomization.yaml").write_text("\n".join(lines) + "\n")
        expected = _kubectl_kustomize(tmp_path)
    else:
        expected = _kubectl_kustomize(directory)
    key = lambda obj: (obj["kind"], obj["metadata"]["name"])  # noqa: E731
    assert sorted(render(directory, components), key=key) == sorted(expected, key=key)


def test_every_yaml_file_under_deploy_k8s_is_used() -> None:
    """A manifest that no kustomization lists is never applied: catch it here."""
    listed: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed.add(kustomization)
        document = load_documents(kustomization)[0]
        for entry in document.get("resources", []) + [patch["path"] for patch in document.get("patches", [])]:
            listed.add((kustomization.parent / entry).resolve())
    documentation = {K8S / "components" / "queue-depth-autoscaling" / "prometheus-adapter-rules.yaml"}
    unused = {path.resolve() for path in K8S.rglob("*.yaml")} - {p.resolve() for p in listed | documentation}
    assert unused == set()
