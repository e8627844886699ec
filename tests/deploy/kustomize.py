"""Just enough of kustomize to render deploy/k8s without kubectl: `resources` (files and directories),
`components`, `patches` (strategic merge patches from files) and `images`. Any other field raises, so a
manifest that starts using one fails loudly here instead of rendering wrong. Where kubectl is installed,
tests/deploy/test_k8s_manifests.py checks that this renders exactly what `kubectl kustomize` does."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]
_SUPPORTED = {"apiVersion", "kind", "resources", "components", "patches", "images"}
# Lists that strategic merge patches merge item by item (by this key) rather than replace: the ones these
# manifests patch. The rest (tolerations, HPA metrics, ...) have no merge key and are replaced whole.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


def load_documents(path: Path) -> list[Object]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def render(directory: Path, extra_components: list[Path] | None = None) -> list[Object]:
    """The objects the kustomization in `directory` produces (plus `extra_components`, as if listed)."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - _SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: kustomization fields this renderer does not know: {sorted(unknown)}")
    objects: list[Object] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else load_documents(path)
    components = [directory / entry for entry in kustomization.get("components", [])]
    for component in components + list(extra_components or []):
        objects = _apply(component.resolve(), load_documents(component / "kustomization.yaml")[0], objects)
    return _apply(directory, {**kustomization, "resources": []}, objects)


def _apply(directory: Path, kustomization: Object, objects: list[Object]) -> list[Object]:
    unknown = set(kustomization) - _SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: kustomization fields this renderer does not know: {sorted(unknown)}")
    objects = [
        *objects,
        *(o for entry in kustomization.get("resources", []) for o in load_documents(directory / entry)),
    ]
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise ValueError(f"{directory}: only `patches: - path: FILE` is supported, not {patch}")
        for document in load_documents(directory / patch["path"]):
            objects = [_patch(obj, document) if _same(obj, document) else obj for obj in objects]
            if not any(_same(obj, document) for obj in objects):
                raise ValueError(
                    f"{directory / patch['path']}: no {document['kind']} {document['metadata']['name']}"
                )
    for image in kustomization.get("images", []):
        if not set(image) <= {"name", "newName", "newTag"}:
            raise ValueError(f"{directory}: image fields this renderer does not know: {image}")
        objects = [_set_image(obj, image) for obj in objects]
    return objects


def _same(obj: Object, patch: Object) -> bool:
    return bool(obj["kind"] == patch["kind"] and obj["metadata"]["name"] == patch["metadata"]["name"])


def _patch(original: Any, patch: Any, key: str = "") -> Any:
    """Strategic merge: maps merge, null deletes, keyed lists merge by key, other lists are replaced."""
    if isinstance(original, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(original)
        for name, value in patch.items():
            if value is None:
                merged.pop(name, None)
            elif name in merged:
                merged[name] = _patch(merged[name], value, name)
            else:
                merged[name] = copy.deepcopy(value)
        return merged
    merge_key = _MERGE_KEYS.get(key)
    if isinstance(original, list) and isinstance(patch, list) and merge_key:
        # kustomize's order: the patch's items first (merged into their originals), then the originals the
        # patch does not mention.
        by_key = {item.get(merge_key): item for item in original}
        patched = [
            _patch(by_key[item.get(merge_key)], item) if item.get(merge_key) in by_key else item
            for item in patch
        ]
        named = {item.get(merge_key) for item in patch}
        return copy.deepcopy(patched + [item for item in original if item.get(merge_key) not in named])
    return copy.deepcopy(patch)


def _set_image(obj: Object, image: Object) -> Object:
    obj = copy.deepcopy(obj)
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        reference = container["image"]
        name = reference.split("@")[0].rsplit(":", 1)[0] if ":" in reference.split("/")[-1] else reference
        if name == image["name"]:
            tag = image.get("newTag", reference.removeprefix(name).lstrip(":") or None)
            container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
    return obj
