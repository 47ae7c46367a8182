"""The KubeRay manifests (deploy/kuberay): what ray_ft needs of a cluster, and KubeRay's own
CRD schemas (ray.io_rayclusters.yaml, ray.io_rayjobs.yaml from ray-project/kuberay),
checked strictly: an unknown field fails as ``kubectl apply --validate=strict`` fails it.

The CRDs are KubeRay's files, not this project's: they are read from ``$KUBERAY_CRDS`` or
the steering repo's ``shared/kuberay/`` beside this checkout (``VERSION`` there names the
KubeRay release they came from).
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kuberay"
CRD_FOLDERS = [
    Path(p) for p in (os.environ.get("KUBERAY_CRDS"), ROOT.parent / "shared" / "kuberay") if p
]


def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


def containers(cluster_spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# -- what ray_ft needs of the cluster ------------------------------------------------------


def test_the_cluster_keeps_what_must_outlive_its_head():
    spec = manifest("raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["gcsFaultToleranceOptions"]["redisAddress"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in str(g)]
    assert gpu and all(g["minReplicas"] == 0 for g in gpu)
    for container in containers(spec):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_FT_STORAGE"].startswith("s3://"), container["name"]


def test_one_ray_release_everywhere():
    """rayVersion, the image the Dockerfile builds and the Ray it installs agree."""
    spec = manifest("raycluster.yaml")["spec"]
    version = spec["rayVersion"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"rayproject/ray:{version}-" in dockerfile and f"ray[default]=={version}" in dockerfile
    tag = re.search(r"docker build -t (\S+)", dockerfile).group(1)  # type: ignore[union-attr]
    assert {c["image"] for c in containers(spec)} == {tag}
    assert "ga_rastrigin.py" in dockerfile


def test_the_job_runs_on_the_same_cluster_and_resumes_when_run_again():
    job = manifest("rayjob.yaml")
    assert job["spec"]["rayClusterSpec"] == manifest("raycluster.yaml")["spec"]
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["entrypoint"].endswith("/ga_rastrigin.py")
    script = (DEPLOY / "ga_rastrigin.py").read_text()
    assert 'DiskCheckpointStore(os.environ.get("CHECKPOINT", "checkpoints/' in script


# -- KubeRay's own schemas ---------------------------------------------------------------------


@functools.cache
def _load(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # a CRD is over 1 MB of YAML
    return yaml.load(path.read_text(), Loader=loader)


def _crd(name: str) -> dict[str, Any]:
    for folder in CRD_FOLDERS:
        path = folder / f"ray.io_{name}.yaml"
        if path.is_file():
            return _load(path)
    pytest.skip(
        f"KubeRay's CRD ray.io_{name}.yaml is not here: put ray-operator/config/crd/bases/"
        "ray.io_rayclusters.yaml and ray.io_rayjobs.yaml of a KubeRay release in "
        "shared/kuberay/ (or point KUBERAY_CRDS at them)"
    )


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused where Kubernetes prunes them."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _validate(document: dict[str, Any], crd: dict[str, Any]) -> None:
    import jsonschema

    version = document["apiVersion"].split("/")[1]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _strict(served["schema"]["openAPIV3Schema"])
    body = {k: v for k, v in document.items() if k not in ("apiVersion", "kind", "metadata")}
    schema = {**schema, "properties": {"spec": schema["properties"]["spec"]}}
    jsonschema.validate(body, schema)


@pytest.mark.parametrize(
    ("name", "crd"), [("raycluster.yaml", "rayclusters"), ("rayjob.yaml", "rayjobs")]
)
def test_the_manifests_pass_kuberays_schemas(name, crd):
    _validate(manifest(name), _crd(crd))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("workerGroupSpecs", 0, "minReplicas"), "zero"),  # a wrong type
        (("workerGroupSpecs", 0, "minReplica"), 0),  # a misspelt field
        (("gcsFaultToleranceOptions", "redisAdress"), "redis:6379"),
    ],
)
def test_a_broken_field_fails_the_check(path, value):
    document = copy.deepcopy(manifest("raycluster.yaml"))
    target = document["spec"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        _validate(document, _crd("rayclusters"))
