"""Reading and writing configs: YAML file + `key.sub=value` overrides -> a validated Config.

Override values are parsed as YAML (`ingest.max_length=256`, `data.settings=[unseen_studies]`);
validation errors name the dotted path of every bad key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from socrates_ray.config.schema import Config
from socrates_ray.errors import SocratesError


class ConfigError(SocratesError, ValueError):
    """A config file or override that cannot be used; the message names the dotted path."""


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key.sub=value, e.g. ingest.max_length=512")
    key, raw_value = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r}: empty key segment in {key!r}")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw_value) if raw_value.strip() else ""


def format_validation_errors(err: ValidationError, source: str, help_hint: str = "`socrates-ray --help-config` lists every key") -> str:
    """One line per bad key, each naming its dotted path (shared by configs and screening specs)."""
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key (check the spelling; {help_hint})")
        else:
            lines.append(f"  {path}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_yaml_mapping(path: str | Path, option: str, example: str, holds: str, error: type[SocratesError]) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; `error` names the option, the example and what went wrong."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{option}: no such file {p} (expected a YAML file such as {example})")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise error(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise error(f"{p}: expected a mapping of {holds} at the top, got {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or start from defaults when path is None), apply overrides, validate."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        tree, source = load_yaml_mapping(path, "--config", "configs/demo.yaml", "sections", ConfigError), str(path)
    for override in overrides:
        apply_override(tree, override)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, source + (" + overrides" if overrides else ""))) from None


CONFIG_FILE = "config.yaml"


def config_yaml(cfg: Config) -> str:
    """The resolved config as YAML: the record every output folder keeps as config.yaml."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def dump_config(cfg: Config, folder: str | Path) -> Path:
    """Write the resolved config as `config.yaml` into an output folder (every run keeps one)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    target = out / CONFIG_FILE
    target.write_text(config_yaml(cfg))
    return target


def describe_schema(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every leaf field: the --help text."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(describe_schema(annotation, key + "."))
            continue
        default = field.get_default(call_default_factory=True)
        type_name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        rows.append((key, type_name, repr(default), field.description or ""))
    return rows
