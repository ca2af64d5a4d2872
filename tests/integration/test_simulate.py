"""Batch simulation: a killed job, re-run, skips the rows it already finished."""

from __future__ import annotations

import glob

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT, SimulateSection
from socrates_ray.data.prepared import INPUT_COLUMNS
from socrates_ray.data.prompts import parse_answer_scale
from socrates_ray.eval import simulate
from socrates_ray.eval.passes import SimulateError, build_pass
from socrates_ray.eval.simulate import run_simulation
from socrates_ray.infer import EngineSpec

pytestmark = pytest.mark.ray


def rows_from(synth_dir, n: int) -> pa.Table:
    table = pq.read_table(sorted(glob.glob(f"{synth_dir}/data/*.parquet"))[0]).slice(0, n)
    scales = [parse_answer_scale(s) for s in table["stimuli"].to_pylist()]
    table = table.append_column("scale_low", pa.array([s.low for s in scales], pa.int64()))
    table = table.append_column("scale_high", pa.array([s.high for s in scales], pa.int64()))
    return table.select(INPUT_COLUMNS)


def test_a_row_longer_than_the_context_is_skipped_and_counted_never_fatal(ray_local, synth_dir, tiny_model, tmp_path) -> None:
    """One runaway prompt in an eval split (prepare keeps up to 200,000 characters; the tiny model reads
    2,048 tokens) once failed the whole simulate on every re-run: it is skipped, listed with the reason,
    and every other row is predicted."""
    rows = rows_from(synth_dir, 12).to_pylist()
    long_one = rows[5]
    long_one["prompt"] = "word " * 3000 + long_one["prompt"]
    table = pa.Table.from_pylist(rows, schema=rows_from(synth_dir, 12).schema)
    logs: list[str] = []
    p = build_pass(SimulateSection(batch_size=4, replicas=1, cpus_per_replica=1), str(tiny_model), DEFAULT_SYSTEM_PROMPT, EngineSpec())
    target = run_simulation(table, tmp_path / "sim", p, log=logs.append)
    predicted = pq.read_table(target)
    assert predicted.num_rows == 11 and "skipped" not in predicted.column_names
    assert long_one["sample_id"] not in predicted["sample_id"].to_pylist()
    skipped = pq.read_table(tmp_path / "sim" / "skipped.parquet").to_pylist()
    assert [r["sample_id"] for r in skipped] == [long_one["sample_id"]] and "over the model's context" in skipped[0]["skipped"]
    assert any("skipped 1 row(s) longer than the model's context" in line for line in logs), logs
    logs.clear()  # a re-run has nothing left to do: the skipped row is not tried again
    run_simulation(table, tmp_path / "sim", p, log=logs.append)
    assert any("12 already done" in line and "0 to go" in line for line in logs), logs


class Killed(Exception):
    """What the test raises where a kill would stop the driver."""


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
def test_killed_simulation_resumes_without_redoing_rows(ray_local, synth_dir, tiny_model, tmp_path, engine, monkeypatch) -> None:
    rows = rows_from(synth_dir, 40)
    sim = SimulateSection(batch_size=8, replicas=1, cpus_per_replica=1)

    def model_pass(name: str):
        return build_pass(sim, str(tiny_model), DEFAULT_SYSTEM_PROMPT, EngineSpec(name))

    out = tmp_path / "sim"
    logs: list[str] = []
    written = []
    real_write = simulate.write_part

    def write_then_die(folder, batch):  # the driver is killed right after its second part lands
        real_write(folder, batch)
        written.append(batch.num_rows)
        if len(written) == 2:
            raise Killed

    monkeypatch.setattr(simulate, "write_part", write_then_die)
    with pytest.raises(SimulateError, match="stopped at 16 of 40 rows: Killed.*finished rows are kept in.*run the same command again"):
        run_simulation(rows, out, model_pass(engine), log=logs.append)
    monkeypatch.undo()
    first = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert first.num_rows == 16 and not (out / "predictions.parquet").exists()

    with pytest.raises(SimulateError, match="engine: '.*' -> '.*'"):  # the other engine's rows never mix in
        run_simulation(rows, out, model_pass("vllm" if engine == "transformers" else "transformers"), log=logs.append)
    logs.clear()
    target = run_simulation(rows, out, model_pass(engine), log=logs.append)
    assert any("16 already done" in line and "24 to go" in line and engine in line for line in logs), logs
    table = pq.read_table(target)
    keys = list(zip(table["study_id"].to_pylist(), table["sample_id"].to_pylist()))
    assert len(keys) == len(set(keys)) == 40
    # exact mode on bounded scales: a distribution per row, summing to 1, and a drawn answer in it
    for r in table.to_pylist():
        if r["scale_low"] is not None:
            assert abs(sum(r["probs"]) - 1) < 1e-6 and r["prediction"] in r["options"]
    # rows finished before the kill were not predicted again
    assert sum(int(p.stat().st_size > 0) for p in out.glob("part-*.parquet")) == 5


def test_a_refusing_endpoint_surfaces_as_one_clear_error(ray_local, synth_dir, tmp_path) -> None:
    """An HTTP 4xx from the Serve app stops the job with the app's message, not a buried Ray traceback."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"error": {"message": "temperature: too hot"}}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = build_pass(SimulateSection(batch_size=4), "unused", DEFAULT_SYSTEM_PROMPT, EngineSpec(),
                       endpoint=f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(SimulateError, match="answered 400.*temperature: too hot") as info:
            run_simulation(rows_from(synth_dir, 8), tmp_path / "sim", p, log=lambda *_: None)
        assert type(info.value) is SimulateError
    finally:
        server.shutdown()


def test_a_replica_restarted_mid_run_costs_retries_not_the_run(ray_local, synth_dir, tmp_path) -> None:
    """simulate over HTTP against a server that stops after 12 answers, is down for 2 s, then comes
    back answering 503 to its first 5 requests (a replica restarting): the run finishes, every row
    once, the refused requests sent again (simulate.http_retries)."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    served = {"ok": 0, "busy": 0}
    lock = threading.Lock()

    class Answer(BaseHTTPRequestHandler):
        busy_left = 0

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                busy = Answer.busy_left > 0
                Answer.busy_left -= busy
                served["busy" if busy else "ok"] += 1
                count = served["ok"]
            if busy:
                status, reply = 503, {"error": {"message": "replica restarting"}}
            elif body["mode"] == "distribution":
                status, reply = 200, {"options": body["options"], "probs": [1 / len(body["options"])] * len(body["options"])}
            else:
                status, reply = 200, {"samples": ["4"]}
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if count == 12 and not busy:
                threading.Thread(target=restart, daemon=True).start()

        def log_message(self, *args):
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Answer)]
    port = servers[0].server_port

    def restart():
        servers[0].shutdown()
        servers[0].server_close()
        time.sleep(2)
        Answer.busy_left = 5
        ThreadingHTTPServer.allow_reuse_address = True
        servers[0] = ThreadingHTTPServer(("127.0.0.1", port), Answer)
        threading.Thread(target=servers[0].serve_forever, daemon=True).start()

    threading.Thread(target=servers[0].serve_forever, daemon=True).start()
    try:
        rows = rows_from(synth_dir, 40)
        p = build_pass(SimulateSection(batch_size=4, http_concurrency=2), "unused", DEFAULT_SYSTEM_PROMPT, EngineSpec(),
                       endpoint=f"http://127.0.0.1:{port}")
        table = pq.read_table(run_simulation(rows, tmp_path / "sim", p, log=lambda *_: None))
        keys = list(zip(table["study_id"].to_pylist(), table["sample_id"].to_pylist()))
        assert len(keys) == len(set(keys)) == 40  # every row once: nothing lost, nothing twice
        assert served["busy"] == 5 and served["ok"] >= 40  # the 503s were sent again
        no_retries = build_pass(SimulateSection(batch_size=4, http_retries=0), "unused", DEFAULT_SYSTEM_PROMPT, EngineSpec(),
                                endpoint=f"http://127.0.0.1:{port}")
        Answer.busy_left = 1000
        with pytest.raises(SimulateError, match="answered 503 after 0 retries.*replica restarting"):
            run_simulation(rows, tmp_path / "sim2", no_retries, log=lambda *_: None)
    finally:
        servers[0].shutdown()


def test_one_replica_pool_serves_base_and_adapter_passes_as_fresh_replicas_would(ray_local, synth_dir, tiny_model, tmp_path) -> None:
    """An evaluation runs every pass through one ReplicaPool: the same actors answer base and
    adapter passes, and give the probabilities a pool started for that pass alone gives."""
    import numpy as np
    import ray
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from socrates_ray.eval.replica import ReplicaPool

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model)),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = str(tmp_path / "adapter")
    model.save_pretrained(adapter)
    rows = rows_from(synth_dir, 24)
    sim = SimulateSection(batch_size=8, replicas=1, cpus_per_replica=1, temperature=1.0)
    base_pass = build_pass(sim, str(tiny_model), DEFAULT_SYSTEM_PROMPT, EngineSpec())
    tuned = build_pass(sim, str(tiny_model), DEFAULT_SYSTEM_PROMPT, EngineSpec(), adapter_path=adapter, adapter_name="finetuned")

    def probs(path) -> list:
        return [p for p in pq.read_table(path)["probs"].to_pylist() if p is not None]

    with ReplicaPool(str(tiny_model), DEFAULT_SYSTEM_PROMPT, {"finetuned": adapter}, base_pass.replicas) as pool:
        actors = list(pool.actors)
        base = probs(run_simulation(rows, tmp_path / "base", base_pass, pool, log=lambda *_: None))
        pooled = probs(run_simulation(rows, tmp_path / "ft", tuned, pool, log=lambda *_: None))
        assert pool.actors == actors and all(ray.get([a.__ray_ready__.remote() for a in actors]))
        with pytest.raises(SimulateError, match="not loaded in this replica pool"):
            other = build_pass(sim, str(tiny_model), DEFAULT_SYSTEM_PROMPT, EngineSpec(), adapter_path=str(tmp_path / "other_adapter"))
            run_simulation(rows, tmp_path / "other", other, pool, log=lambda *_: None)
    alone = probs(run_simulation(rows, tmp_path / "ft_alone", tuned, log=lambda *_: None))
    assert len(base) == len(pooled) == len(alone) > 0
    assert max(float(np.abs(np.subtract(a, b)).max()) for a, b in zip(pooled, alone)) < 1e-6
    assert max(float(np.abs(np.subtract(a, b)).max()) for a, b in zip(pooled, base)) > 1e-3  # the adapter was used
    # the pass run_simulation made alone is eval/processor.py's Ray Data stage, usable on any Dataset
    from socrates_ray.eval.processor import build_simulate_processor

    out = build_simulate_processor(tuned)(ray.data.from_arrow(rows)).to_arrow_refs()
    table = pa.concat_tables(ray.get(out)).sort_by([("study_id", "ascending"), ("sample_id", "ascending")])
    assert table.num_rows == rows.num_rows and {"prediction", "options", "probs", "samples", "participant"} <= set(table.column_names)
    assert max(float(np.abs(np.subtract(a, b)).max()) for a, b in zip([p for p in table["probs"].to_pylist() if p is not None], alone)) < 1e-6
