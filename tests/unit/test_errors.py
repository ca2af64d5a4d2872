"""One error base the CLI catches, and typed errors recovered from Ray's wrappers."""


from socrates_ray.eval.calibrate import CalibrationError
from socrates_ray.cli import main
from socrates_ray.config import ConfigError
from socrates_ray.data.ingest import IngestError
from socrates_ray.errors import SocratesError, unwrap
from socrates_ray.infer import ScoreError
from socrates_ray.eval.simulate import SimulateError


def test_every_user_error_shares_the_base_and_keeps_its_old_type():
    for kind, old in [(ConfigError, ValueError), (IngestError, ValueError), (ScoreError, ValueError),
                      (SimulateError, ValueError), (CalibrationError, ValueError)]:
        assert issubclass(kind, SocratesError) and issubclass(kind, old)


def test_unwrap_finds_the_cause_raised_in_this_process():
    inner = ScoreError("prompt too long")
    try:
        try:
            raise inner
        except ScoreError as e:
            raise RuntimeError("task failed") from e
    except RuntimeError as outer:
        assert unwrap(outer) is inner


def test_unwrap_rebuilds_the_innermost_typed_error_from_a_remote_traceback():
    # what a RayTaskError's text looks like when an actor raised SimulateError while handling a ScoreError
    text = ("ray::LocalReplica.predict() (pid=1, ip=1.2.3.4)\n  File \"x.py\", line 3\n"
            "socrates_ray.infer.engine.ScoreError: adapter 'a' is not loaded\n\nDuring handling...\n"
            "socrates_ray.eval.passes.SimulateError: column 'prompt' is missing\n")
    found = unwrap(RuntimeError(text))
    assert type(found) is SimulateError and str(found) == "column 'prompt' is missing"


def test_unwrap_leaves_other_errors_alone():
    exc = RuntimeError("segfault in worker")
    assert unwrap(exc) is exc


def test_the_cli_prints_one_line_and_exits_2_for_any_socrates_error(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("train:\n  lr: -1\n")
    assert main(["ingest", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("socrates-ray ingest: error:") and "train.lr" in err and "Traceback" not in err
