"""Quiet runs: library loggers that reset their own level on import still show only errors."""

from __future__ import annotations

import logging
import warnings

from socrates_ray.runtime import quiet_libraries
from socrates_ray.config import RunSection


def test_a_logger_that_resets_its_level_keeps_only_errors_and_verbose_runs_keep_everything(monkeypatch, caplog) -> None:
    for var in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(var, "")  # restored after the test, whatever quiet_libraries sets
        monkeypatch.delenv(var)
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    logger = logging.getLogger("DeepSpeed")
    before = list(logger.filters)
    try:
        quiet_libraries(RunSection(log_level="info"))  # verbose: nothing added
        assert logger.filters == before
        quiet_libraries(RunSection())
        quiet_libraries(RunSection())  # a second command in the same process adds no second filter
        assert sum(type(f).__name__ == "AtLeast" for f in logger.filters) == 1
        logger.setLevel(logging.INFO)  # what DeepSpeed's LoggerFactory does when imported
        with caplog.at_level(logging.INFO, logger="DeepSpeed"):
            logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
            logger.info("Setting ds_accelerator to cpu")
            logger.error("a real problem")
        assert [r.getMessage() for r in caplog.records] == ["a real problem"]
    finally:
        logger.filters[:] = before
        logging.getLogger("ray.serve").filters[:] = [f for f in logging.getLogger("ray.serve").filters if type(f).__name__ != "AtLeast"]
