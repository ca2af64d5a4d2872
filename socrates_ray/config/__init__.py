"""The run configuration: the typed schema (schema.py) and how a YAML file plus overrides become
one validated Config (loading.py). `from socrates_ray.config import ...` is the way in."""

from socrates_ray.config.loading import (
    CONFIG_FILE, ConfigError, apply_override, config_yaml, derive, describe_schema, dump_config, load_config,
)
from socrates_ray.config.base import Section, SplitSetting
from socrates_ray.config.schema import (
    DEFAULT_SYSTEM_PROMPT, Config, DataSection, ModelSection, PromptSection, RunSection, SynthSection, TinyModelSection,
    VllmSection,
)
from socrates_ray.config.stages import (
    AutoscalingSection, CurveSection, DpoSection, EvaluateSection, IngestSection, LoraSection, PilotSection, ServeSection, SimulateSection, TrainSection,
)

__all__ = [
    "CONFIG_FILE", "ConfigError", "apply_override", "config_yaml", "derive", "describe_schema", "dump_config", "load_config",
    "DEFAULT_SYSTEM_PROMPT", "AutoscalingSection", "Config", "CurveSection", "DataSection", "DpoSection", "EvaluateSection", "IngestSection", "PilotSection",
    "LoraSection", "ModelSection", "PromptSection", "RunSection", "Section", "ServeSection", "SimulateSection",
    "SplitSetting", "SynthSection", "TinyModelSection", "TrainSection", "VllmSection",
]
