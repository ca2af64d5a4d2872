"""One writer per folder: the lock a command holds while it writes a training run or a prepared folder.

    with folder_lock(run_dir, "train", log=print):
        ...   # a second `train` of the same run, started meanwhile, exits 2 naming this one

The lock is a file beside the folder, `.<name>.lock`, created with O_CREAT | O_EXCL (one creator
wins, also on a filesystem the cluster's nodes share: NFS v3 and later, Lustre, and the POSIX
mounts of object stores that honour exclusive create). It holds the holder's pid, host, process
start time and command, and is removed when the holder leaves the `with` block, by any exit but a
killed process. A lock left by a process of this host that no longer runs (checked by pid and start
time, so a reused pid is not mistaken for the holder) is stale: it is taken over, with a line saying
so. A lock held from another host is never taken over, because its process cannot be checked from
here: the error names the host and pid and says which file to delete once that process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from socrates_ray.errors import SocratesError


_HELD: dict[Path, int] = {}  # the locks this process holds -> how deeply


class LockHeld(SocratesError):
    """Another process is writing the same folder."""


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def _started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None when it does not run."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except ImportError:  # psutil comes with Ray; without it, liveness alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    except Exception:  # NoSuchProcess, ZombieProcess, AccessDenied on a process that has gone
        return None


def _holder_runs(holder: dict[str, Any]) -> bool | None:
    """Whether the lock's holder still runs: None when it is on another host (not checkable)."""
    if holder.get("host") != socket.gethostname():
        return None
    started = _started(int(holder.get("pid", -1)))
    if started is None:
        return False
    recorded = holder.get("started")
    return not (started and recorded and abs(started - float(recorded)) > 1.0)  # the pid now names another process


def _describe(holder: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since", 0))))
    return f"pid {holder.get('pid')} on host {holder.get('host')} ({holder.get('command', '?')}, since {since})"


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # a lock file cut short by a crash while it was written
        return {}


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str, log: Callable[[str], Any] = print) -> Iterator[Path]:
    """Hold the lock on `folder` for the block; raise LockHeld when another live process holds it.
    Re-entrant within a process (the API takes it before Ray starts, the stage again inside)."""
    path = lock_path(folder).resolve()
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield path
        finally:
            _HELD[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _started(os.getpid()), "since": time.time(),
          "command": command, "argv": " ".join(sys.argv[:6]), "token": uuid.uuid4().hex}
    for _ in range(50):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # released between our create and our read: try again
                continue
            if not holder and _age(path) < 5.0:  # created this instant, its holder still writing it
                time.sleep(0.1)
                continue
            runs = _holder_runs(holder) if holder else False
            if runs is None or runs:
                where = "" if runs else " (another host: its process cannot be checked from here)"
                raise LockHeld(
                    f"{Path(folder)} is being written by another {holder.get('command', 'process')}: {_describe(holder)}{where}. "
                    f"Wait for it to finish, or use another {'run.name' if command in ('train', 'pilot') else 'output folder'}; "
                    f"if that process is gone, delete {path}"
                )
            # stale: moved aside (one process wins the rename), then created afresh
            aside = path.with_name(f"{path.name}.stale-{me['token']}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            log(f"{command}: took over the lock of {Path(folder)} left by {_describe(holder) if holder else 'a crashed process'}, "
                "which no longer runs")
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise LockHeld(f"could not take the lock {path} (it keeps changing hands); try again")
    _HELD[path] = 1
    try:
        yield path
    finally:
        del _HELD[path]
        if (_read(path) or {}).get("token") == me["token"]:  # never remove a lock another process took over
            path.unlink(missing_ok=True)
