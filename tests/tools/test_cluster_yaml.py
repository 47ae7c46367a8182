"""cluster.yaml passes Ray's own autoscaler schema once Ray has filled its defaults."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture
def config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_is_valid(config):
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    assert "gpu_worker" in prepared["available_node_types"]
    assert any("ray-ft" in cmd for cmd in prepared["setup_commands"])
    # storage a replaced head finds, for every node and every job
    assert any("RAY_FT_STORAGE=s3://" in cmd for cmd in prepared["setup_commands"])


def test_schema_check_can_fail(config):
    config["available_node_types"]["head"]["no_such_field"] = 1
    with pytest.raises(Exception, match=r"no_such_field|Additional properties"):
        validate_config(prepare_config(config))
