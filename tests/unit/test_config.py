from pathlib import Path

import pytest
import yaml

from socrates_ray.cli import build_parser, main, schema_help
from socrates_ray.config import ConfigError, describe_schema, dump_config, load_config

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))


def test_there_are_configs():
    assert any(p.name == "demo.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.run.name


def test_unknown_key_names_dotted_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  rawx: /tmp/x\n")
    # the nearest real key, and a command that exists for the whole list
    with pytest.raises(ConfigError, match=r"data\.rawx: unknown key \(did you mean data\.raw\? `socrates-ray config keys`"):
        load_config(p)
    assert main(["config", "keys"]) == 0
    with pytest.raises(ConfigError, match=r"model\.tiny\.hiden_size: unknown key"):
        load_config(None, ["model.tiny.hiden_size=3"])


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(None, ["ingest.max_length=512", "data.settings=[unseen_studies]", "run.name=x y"])
    assert cfg.ingest.max_length == 512
    assert cfg.data.settings == ["unseen_studies"]
    assert cfg.run.name == "x y"


def test_text_fields_take_what_was_typed():
    # YAML would read these as a date, an int, a float and a bool; a name is a name
    for typed in ("2025-12-01", "123", "1e3", "yes", "null"):
        assert load_config(None, [f"run.name={typed}"]).run.name == typed
    cfg = load_config(None, ["serve.adapters.v2=runs/x/export", "simulate.adapter_path=null", "evaluate.adapter_path=007",
                             "simulate.temperature=auto", "train.zero_stage=3"])
    assert cfg.serve.adapters == {"v2": "runs/x/export"}
    assert cfg.simulate.adapter_path is None and cfg.evaluate.adapter_path == "007"
    assert cfg.simulate.temperature == "auto" and cfg.train.zero_stage == 3


def test_config_show_prints_the_resolved_yaml(capsys):
    assert main(["config", "show", "--config", "configs/demo.yaml", "run.name=2025-12-01", "train.max_steps=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["run"]["name"] == "2025-12-01" and shown["train"]["max_steps"] == 7
    assert load_config(None, []).model_validate(shown).train.lora.r == 96  # the demo's own value, resolved
    with pytest.raises(SystemExit):
        main(["config", "bogus"])


def test_bad_values_say_path_and_what_came():
    with pytest.raises(ConfigError, match=r"ingest\.layout: .*got 'zip'"):
        load_config(None, ["ingest.layout=zip"])
    with pytest.raises(ConfigError, match=r"ingest\.max_length"):
        load_config(None, ["ingest.max_length=-3"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, ["ingest.max_length"])
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/c.yaml")
    # the flash varlen kernel is CUDA + bf16 only: refused before any worker starts, with what to use instead
    with pytest.raises(ConfigError, match=r"needs CUDA and bf16 \(got train\.use_gpu=false\).*train\.attention=segments"):
        load_config(None, ["train.attention=varlen"])
    with pytest.raises(ConfigError, match=r"got train\.precision=fp32"):
        load_config(None, ["train.attention=varlen", "train.use_gpu=true", "train.precision=fp32"])
    assert load_config(None, ["train.attention=varlen", "train.use_gpu=true"]).train.attention == "varlen"


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["synth.rows=777"])
    written = dump_config(cfg, tmp_path / "run")
    assert yaml.safe_load(written.read_text())["synth"]["rows"] == 777
    assert load_config(written) == cfg


def test_help_comes_from_field_descriptions(capsys):
    text = schema_help()
    assert "data.raw" in text and "fsspec URL" in text
    # choices are spelled out, not `Literal`
    assert "ingest.layout" in text and "pack | pad_longest | pad_max_length | shared_prefix = pack" in text and "Literal" not in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "--help"])
    prepare_help = capsys.readouterr().out
    assert "data.raw" in prepare_help and "ingest.layout" not in prepare_help  # only the keys prepare reads
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    train_help = capsys.readouterr().out
    assert "ingest.layout" in train_help and "train.lora.r" in train_help and "serve.port" not in train_help


def test_field_descriptions_hold_no_figures_or_history():
    """A description says what a field means and when to change it: no timings, ratios, dates or README sections."""
    import re

    bad = re.compile(r"\d\.\d+ ?x\b|\b\d+(\.\d+)? ?(ms|s)\b|20\d\d-\d\d|README|commit|measured")
    offenders = [(key, desc) for key, _, _, desc in describe_schema() if bad.search(desc)]
    assert not offenders, offenders


def test_cli_config_error_exits_2_without_traceback(capsys):
    assert main(["prepare", "data.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "data.nope: unknown key" in err and "Traceback" not in err


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_opens_with_what_it_does_and_how_to_launch_it(path):
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 2 and ("socrates-ray " in "\n".join(header) or "ray job submit" in "\n".join(header))


def test_paper_recipe_config_matches_paper_section_4():
    cfg = load_config(Path(CONFIGS[0]).parent / "qwen14b_full.yaml")
    t, ing = cfg.train, cfg.ingest
    assert t.finetuning == "full" and t.precision == "bf16" and t.zero_stage == 3
    assert (t.lr, t.warmup_ratio, t.weight_decay, t.epochs) == (1.0e-5, 0.05, 0.1, 1)
    assert ing.micro_batch_size * t.grad_accum * ing.num_workers == 256 and ing.max_length == 2048
    assert "Qwen2.5-14B-Instruct" in cfg.model.path


def test_cluster_configs_use_gpus_and_the_shared_mount():
    cluster = [load_config(p) for p in CONFIGS if p.name not in ("demo.yaml", "socsci210.yaml")]
    assert len(cluster) >= 7
    for cfg in cluster:
        for path in (cfg.run.output_dir, cfg.train.storage_path, cfg.model.path):
            assert path.startswith("/mnt/shared/"), path  # cluster.yaml mounts the shared EFS there
    trainers = [c for c in cluster if c.ingest.num_workers == 8 and c.train.use_gpu]
    assert {c.model.path.rsplit("/", 1)[1] for c in trainers} >= {"Qwen2.5-14B-Instruct", "Meta-Llama-3-8B-Instruct"}
    evals = [c for c in cluster if c.evaluate.output_dir]
    assert sorted(s for c in evals for s in c.evaluate.settings) == ["unseen_conditions", "unseen_studies", "unseen_tasks"]
    assert len({c.evaluate.output_dir for c in evals}) == 3
