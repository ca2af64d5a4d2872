"""cluster.yaml against Ray's own cluster schema (the checks `ray up` runs before it starts
anything), plus the properties the project relies on."""

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema(raw):
    validate_config(prepare_config(copy.deepcopy(raw)))  # what `ray up` does first


def test_the_schema_check_bites(raw):
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_train_8x"]["gpus"] = 8  # a typo'd key
    with pytest.raises(jsonschema.ValidationError, match="gpus"):
        validate_config(prepare_config(broken))


def test_node_types_head_takes_no_work_gpu_types_for_training_and_serving(raw):
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no GPU, and no tasks scheduled on it
    gpus = {name: t["resources"].get("GPU", 0) for name, t in types.items()}
    assert 8 in gpus.values() and 1 in gpus.values()
    for name, t in types.items():
        if name != raw["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"] <= raw["max_workers"], name


def test_dashboard_is_not_public(raw):
    rules = raw["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(r["CidrIp"] != "0.0.0.0/0" for rule in rules for r in rule["IpRanges"])
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start


def test_setup_installs_the_pinned_stack_and_mounts_shared_storage(raw):
    setup = "\n".join(raw["setup_commands"])
    assert re.search(r"pip install -q torch==2\.13\.0\n", setup)
    assert "-c ~/socrates_ray/constraints.txt" in setup
    assert "mount -t nfs4" in setup and "/mnt/shared" in setup
    assert raw["file_mounts"]["/home/ubuntu/socrates_ray"] == "."


def test_gpu_nodes_install_vllm_with_the_gpu_pin_set(raw):
    setup = "\n".join(raw["setup_commands"])
    assert re.search(r"if nvidia-smi .*-c ~/socrates_ray/constraints-gpu\.txt -e \"\$HOME/socrates_ray\[vllm\]\"", setup)
    gpu = dict(line.split("==") for line in (REPO / "constraints-gpu.txt").read_text().splitlines() if "==" in line)
    cpu = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'vllm = ["vllm=={gpu["vllm"]}"]' in pyproject
    # the stack the project runs on is the same on CPU and GPU machines
    for name in ("ray", "transformers", "peft", "deepspeed", "pyarrow", "fastapi"):
        assert gpu[name] == cpu[name], name
    assert gpu["torch"] == cpu["torch"] == "2.13.0"


def test_no_secret_is_passed_on_a_job_entrypoint():
    # `ray job list` shows every job's entrypoint and runtime_env to anyone with the dashboard
    for path in [REPO / "cluster.yaml", REPO / "runtime_env.yaml", *sorted((REPO / "configs").glob("*.yaml"))]:
        text = path.read_text()
        assert not re.search(r"(TOKEN|KEY|SECRET)\w*=<?\w", text), path.name
