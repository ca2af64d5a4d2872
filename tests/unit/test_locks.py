"""One writer per folder: a second process is refused with the holder named; a lock left by a dead
process is taken over, saying so; the lock goes when its holder leaves, and only its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from socrates_ray.locks import LockHeld, folder_lock, lock_path

# a second process taking the same lock: prints "held" or "refused: <message>"
OTHER = textwrap.dedent("""
    import sys
    from socrates_ray.locks import LockHeld, folder_lock
    try:
        with folder_lock(sys.argv[1], "train", log=lambda line: print("log:", line)):
            print("held")
    except LockHeld as e:
        print("refused:", e)
""")


def other_process(folder) -> str:
    return subprocess.run([sys.executable, "-c", OTHER, str(folder)], capture_output=True, text=True, timeout=60, check=True).stdout


def test_a_second_process_is_refused_while_the_first_holds_the_lock(tmp_path):
    run = tmp_path / "runs" / "demo"
    with folder_lock(run, "train", log=print) as path:
        assert path == lock_path(run).resolve() and json.loads(path.read_text())["command"] == "train"
        out = other_process(run)
        assert out.startswith("refused:") and "is being written by another train" in out and "pid" in out, out
        with folder_lock(run, "train"):  # re-entrant in the holding process
            pass
        assert path.exists()
    assert not lock_path(run).exists()  # released on exit
    assert other_process(run).strip() == "held"  # and free for the next writer


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_line(tmp_path):
    run = tmp_path / "demo"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    lock_path(run).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": time.time() - 60,
                                          "since": time.time() - 60, "command": "train"}))
    out = other_process(run)
    assert "log: train: took over the lock" in out and "no longer runs" in out and out.strip().endswith("held"), out

    lock_path(run).write_text("")  # a lock file cut short by a crash, long ago
    import os

    os.utime(lock_path(run), (time.time() - 60, time.time() - 60))
    assert other_process(run).strip().endswith("held")


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    run = tmp_path / "demo"
    lock_path(run).write_text(json.dumps({"pid": 1, "host": "node-7", "since": time.time(), "command": "prepare"}))
    with pytest.raises(LockHeld, match="on host node-7.*another host.*delete"):
        with folder_lock(run, "prepare"):
            pass
    assert lock_path(run).exists()  # still there: not ours to remove
