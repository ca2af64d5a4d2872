"""The base every config section derives from, and the names of the split settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

SplitSetting = Literal["unseen_studies", "unseen_conditions", "unseen_tasks", "unseen_participants", "all_settings"]
EvalSetting = Literal["unseen_studies", "unseen_conditions", "unseen_tasks", "unseen_participants"]


class Section(BaseModel):
    """Base for every section: unknown keys are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
