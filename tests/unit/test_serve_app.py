"""The Serve app's builders: config is read where the app is built, replicas get plain values."""

from __future__ import annotations

import pytest

from socrates_ray.config import load_config
from socrates_ray.serve.app import deployment_options, replica_settings


def test_deployment_options_carry_the_serve_section():
    cfg = load_config("configs/demo.yaml", ["serve.num_cpus=0.5", "serve.max_ongoing_requests=32", "serve.autoscaling.max_replicas=3"])
    options = deployment_options(cfg.serve)
    assert options["max_ongoing_requests"] == 32
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0}
    assert options["autoscaling_config"]["max_replicas"] == 3
    assert options["autoscaling_config"]["min_replicas"] == cfg.serve.autoscaling.min_replicas


def test_replica_settings_read_the_token_where_the_app_is_built_and_never_print_it(monkeypatch):
    monkeypatch.setenv("SOCRATES_UNIT_TOKEN", "s3cret")
    cfg = load_config("configs/demo.yaml", ["serve.auth_token_env=SOCRATES_UNIT_TOKEN", "serve.max_batch_size=4"])
    settings = replica_settings(cfg, "runs/tiny-model")
    assert settings.token == "s3cret" and "s3cret" not in repr(settings)
    assert (settings.model_path, settings.max_batch_size, settings.system_prompt) == ("runs/tiny-model", 4, cfg.prompt.system_prompt)
    assert replica_settings(load_config("configs/demo.yaml", []), "m").token is None  # no auth configured

    monkeypatch.setenv("SOCRATES_UNIT_TOKEN", "")
    with pytest.raises(ValueError, match="SOCRATES_UNIT_TOKEN is empty or unset"):
        replica_settings(cfg, "runs/tiny-model")
