"""Reading and writing configs: YAML file + `key.sub=value` overrides -> a validated Config.

Override values are parsed as YAML (`ingest.max_length=256`, `data.settings=[unseen_studies]`),
except for text fields, which take what was typed (`run.name=2025-12-01` is a name, not a date);
validation errors name the dotted path of every bad key and suggest the nearest real one.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ValidationError

from socrates_ray.config.schema import Config
from socrates_ray.errors import SocratesError


class ConfigError(SocratesError, ValueError):
    """A config file or override that cannot be used; the message names the dotted path."""


def _leaf_annotation(parts: list[str], model: type[BaseModel] = Config) -> Any:
    """The type annotation a dotted key ends on (None when the key is not in the schema: validation
    then names it). Dict fields take any key below them (`serve.adapters.mine=path`)."""
    annotation: Any = model
    for part in parts:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        elif typing.get_origin(annotation) is list and part.isdigit():  # a screening spec's outcomes.0.name
            annotation = typing.get_args(annotation)[0]
        else:
            return None
    return annotation


def _union_args(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,)


def parse_override_value(annotation: Any, raw: str) -> Any:
    """A text field keeps the text as typed (YAML would make `2025-12-01` a date and `123` an int);
    an optional text field reads `null` / `~` / nothing as None; everything else is parsed as YAML."""
    members = _union_args(annotation)
    if str in members and all(m in (str, type(None)) for m in members):
        if type(None) in members and raw.strip() in ("null", "~", ""):
            return None
        return raw
    return yaml.safe_load(raw) if raw.strip() else ""


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed by the type of the field it sets."""
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
    node[parts[-1]] = parse_override_value(_leaf_annotation(parts), raw_value)


KEYS_HINT = "`socrates-ray config keys` lists every key"


def nearest_key(path: tuple[Any, ...], model: type[BaseModel]) -> str | None:
    """The real key a misspelled dotted path most likely meant (`data.rawx` -> `data.raw`)."""
    parent = _leaf_annotation([str(p) for p in path[:-1]], model) if len(path) > 1 else model
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
        return None
    close = difflib.get_close_matches(str(path[-1]), list(parent.model_fields), n=1, cutoff=0.6)
    return ".".join([*map(str, path[:-1]), close[0]]) if close else None


def format_validation_errors(err: ValidationError, source: str, help_hint: str = KEYS_HINT, model: type[BaseModel] = Config) -> str:
    """One line per bad key, each naming its dotted path (shared by configs and screening specs)."""
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            guess = nearest_key(tuple(e["loc"]), model)
            lines.append(f"  {path}: unknown key ({f'did you mean {guess}? ' if guess else 'check the spelling; '}{help_hint})")
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


def _validated(tree: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> Config:
    """`tree` with the overrides applied, as a validated Config; errors name `source`."""
    for override in overrides:
        apply_override(tree, override)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, source + (" + overrides" if overrides else ""))) from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or start from defaults when path is None), apply overrides, validate."""
    if path is None:
        return _validated({}, overrides, "defaults")
    return _validated(load_yaml_mapping(path, "--config", "configs/demo.yaml", "sections", ConfigError), overrides, str(path))


def derive(cfg: Config, overrides: list[str]) -> Config:
    """A validated copy of `cfg` with dotted overrides applied, for orchestrators that run a stage
    several ways (the learning curve's runs); stages themselves never change their config."""
    return _validated(cfg.model_dump(mode="json"), overrides, "derived config")


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


def type_label(annotation: Any) -> str:
    """A field's type as a user reads it: choices spelled out (`auto | bf16 | fp32`), `| null` when optional."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(type_label(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return type_label(typing.get_args(annotation)[0])
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_label(a) for a in typing.get_args(annotation))}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


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
        rows.append((key, type_label(annotation), yaml.safe_dump(default, default_flow_style=True, width=10_000).strip().removesuffix("\n..."),
                     field.description or ""))
    return rows
