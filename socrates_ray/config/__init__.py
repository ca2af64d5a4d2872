"""The run configuration: the typed schema (schema.py) and how a YAML file plus overrides become
one validated Config (loading.py). `from socrates_ray.config import ...` is the way in."""

from socrates_ray.config.loading import ConfigError, apply_override, describe_schema, dump_config, load_config
from socrates_ray.config.schema import (
    DEFAULT_SYSTEM_PROMPT, AutoscalingSection, Config, DataSection, EvaluateSection, IngestSection, LoraSection,
    ModelSection, PromptSection, RunSection, Section, ServeSection, SimulateSection, SplitSetting, SynthSection,
    TinyModelSection, TrainSection, VllmSection,
)

__all__ = [
    "ConfigError", "apply_override", "describe_schema", "dump_config", "load_config",
    "DEFAULT_SYSTEM_PROMPT", "AutoscalingSection", "Config", "DataSection", "EvaluateSection", "IngestSection",
    "LoraSection", "ModelSection", "PromptSection", "RunSection", "Section", "ServeSection", "SimulateSection",
    "SplitSetting", "SynthSection", "TinyModelSection", "TrainSection", "VllmSection",
]
