"""The Serve app's builders: config is read where the app is built, replicas get plain values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def test_the_token_can_come_from_a_file_only_its_owner_reads(tmp_path, monkeypatch):
    token_file = tmp_path / "serve_token"
    cfg = load_config("configs/demo.yaml", [f"serve.auth_token_file={token_file}"])
    with pytest.raises(ValueError, match=r"is not a file; .*umask 077"):
        replica_settings(cfg, "m")
    token_file.write_text("t0ken\n")
    token_file.chmod(0o644)
    with pytest.raises(ValueError, match=r"can be read by other users; chmod 600"):
        replica_settings(cfg, "m")
    token_file.chmod(0o600)
    assert replica_settings(cfg, "m").token == "t0ken"
    token_file.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        replica_settings(cfg, "m")
    with pytest.raises(ValueError, match="both set; keep one"):
        load_config("configs/demo.yaml", [f"serve.auth_token_file={token_file}", "serve.auth_token_env=X"])


def test_one_bad_request_in_a_batch_gets_its_own_error_and_its_neighbours_their_answers():
    import threading

    from socrates_ray.infer import ScoreError
    from socrates_ray.serve.replica import DistributionJob, ModelCore

    class FakeEngine:
        calls = 0
        adapters: dict = {}

        def option_logprobs(self, texts, options, adapter):
            FakeEngine.calls += 1
            if "too long" in texts:
                raise ScoreError("prompt 'too long' needs 900 tokens")
            if "crash" in texts:
                raise RuntimeError("a fault inside the model")
            return [np.log([1 / len(o)] * len(o)) for o in options]

    core = object.__new__(ModelCore)  # the batching logic alone: no model, no Serve
    core.engine, core.lock = FakeEngine(), threading.Lock()
    core._init_adapters()
    jobs = [DistributionJob(None, t, opts) for t, opts in
            [("a", [1, 2]), ("too long", [1, 2]), ("crash", [1, 2]), ("b", [1, 2, 3, 4])]]
    results = core._run_sync(jobs)
    assert list(results[0]) == pytest.approx([0.5, 0.5]) and list(results[3]) == pytest.approx([0.25] * 4)  # the valid requests are answered
    assert isinstance(results[1], ScoreError) and "too long" in str(results[1])  # its own message, not a neighbour's
    assert isinstance(results[2], RuntimeError)
    assert FakeEngine.calls == 1 + 4  # one batched call, then one call a job
    # a group that succeeds is one call
    FakeEngine.calls = 0
    assert [list(r) for r in core._run_sync([DistributionJob(None, "a", [1, 2]), DistributionJob(None, "b", [1, 2])])] == [[0.5, 0.5]] * 2
    assert FakeEngine.calls == 1


def test_an_adapter_evicted_while_a_request_uses_it_stays_loaded_until_that_request_is_answered(tmp_path):
    import asyncio
    import threading
    from collections import OrderedDict

    from socrates_ray.serve.replica import DistributionJob, ModelCore, ReplicaSettings

    class FakeEngine:
        def __init__(self):
            self.adapters, self.loads = {}, 0

        def load_adapter(self, name, path):
            if name not in self.adapters:
                self.adapters[name], self.loads = str(path), self.loads + 1

        def unload_adapter(self, name):
            self.adapters.pop(name, None)

        def option_logprobs(self, texts, options, adapter):
            assert adapter in self.adapters, f"unknown adapter {adapter!r}"  # what a real engine refuses
            return [np.log([0.5, 0.5]) for _ in texts]

    class LRU:
        """What serve.multiplexed does on a miss over capacity: evict the least recently used handle
        and call its __del__ (Ray 2.60, serve/multiplex.py)."""

        def __init__(self, load, capacity):
            self.load, self.capacity, self.models = load, capacity, OrderedDict()

        async def __call__(self, name):
            if name in self.models:
                self.models.move_to_end(name)
                return self.models[name]
            while len(self.models) >= self.capacity:
                _, evicted = self.models.popitem(last=False)
                evicted.__del__()
            self.models[name] = await self.load(name)
            return self.models[name]

    extra = {f"a{i}": str(tmp_path / f"a{i}") for i in range(4)}
    for folder in extra.values():  # listed adapters must exist (the fake engine reads nothing in them)
        Path(folder).mkdir()
        (Path(folder) / "adapter_config.json").write_text("{}")
    core = object.__new__(ModelCore)
    core.settings = ReplicaSettings("m", "", 1, 0, "fp32", 512, None, extra, 1, 8, 0.01, 4, 64, 1 << 20)
    core.engine, core.lock = FakeEngine(), threading.Lock()
    core._init_adapters()
    core.get_adapter = LRU(core._load_adapter, capacity=1)

    async def scenario():
        async with core.using_adapter("a1") as first:
            async with core.using_adapter("a2"):  # evicts a1 from the LRU while a1's request is queued
                pass
            assert [list(r) for r in core._run_sync([DistributionJob(first, "x", [1, 2])])] == [[0.5, 0.5]]  # a1 still there
            async with core.using_adapter("a1"):  # back in the cache: reused, not loaded twice
                assert core.engine.loads == 2
        core._run_sync([DistributionJob(None, "x", [1, 2])])  # after a batch, nothing unused stays loaded
        assert set(core.engine.adapters) == {"a1"}  # a1 is the LRU's one entry; a2 was evicted and freed
        async with core.using_adapter("a3"):
            pass
        core._run_sync([DistributionJob(None, "x", [1, 2])])
        assert set(core.engine.adapters) == {"a3"}
        async with core.using_adapter(None) as base:
            assert base is None

    asyncio.run(scenario())
