from pathlib import Path

import pytest
import yaml

from socrates_ray.cli import build_parser, main, schema_help
from socrates_ray.config import ConfigError, dump_config, load_config

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
    with pytest.raises(ConfigError, match=r"data\.rawx: unknown key"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"model\.tiny\.hiden_size: unknown key"):
        load_config(None, ["model.tiny.hiden_size=3"])


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(None, ["ingest.max_length=512", "data.settings=[unseen_studies]", "run.name=x y"])
    assert cfg.ingest.max_length == 512
    assert cfg.data.settings == ["unseen_studies"]
    assert cfg.run.name == "x y"


def test_bad_values_say_path_and_what_came():
    with pytest.raises(ConfigError, match=r"ingest\.layout: .*got 'zip'"):
        load_config(None, ["ingest.layout=zip"])
    with pytest.raises(ConfigError, match=r"ingest\.max_length"):
        load_config(None, ["ingest.max_length=-3"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, ["ingest.max_length"])
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/c.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["synth.rows=777"])
    written = dump_config(cfg, tmp_path / "run")
    assert yaml.safe_load(written.read_text())["synth"]["rows"] == 777
    assert load_config(written) == cfg


def test_help_comes_from_field_descriptions(capsys):
    text = schema_help()
    assert "data.raw" in text and "fsspec URL" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "--help"])
    assert "ingest.layout" in capsys.readouterr().out


def test_cli_config_error_exits_2_without_traceback(capsys):
    assert main(["prepare", "data.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "data.nope: unknown key" in err and "Traceback" not in err
