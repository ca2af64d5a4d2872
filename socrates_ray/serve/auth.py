"""The Serve app's bearer token (serve.auth_token_env or serve.auth_token_file), read where the app is
built or called, never written into a config, a job's entrypoint or its runtime_env."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from socrates_ray.config import ConfigError, ServeSection


def bearer_token(s: ServeSection) -> str | None:
    """The token clients must send, or None when the app is open. An empty or missing source is an
    error, never an open app."""
    if s.auth_token_file:
        path = Path(s.auth_token_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"serve.auth_token_file: {s.auth_token_file} is not a file; write the token into it, "
                              f"readable by you alone: (umask 077; openssl rand -hex 32 > {s.auth_token_file})")
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"serve.auth_token_file: {s.auth_token_file} can be read by other users; "
                              f"chmod 600 {s.auth_token_file}")
        lines = path.read_text().splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"serve.auth_token_file: {s.auth_token_file} is empty; write the token on its first line")
        return token
    if s.auth_token_env:
        token = os.environ.get(s.auth_token_env, "")
        if not token:
            raise ConfigError(f"serve.auth_token_env: the environment variable {s.auth_token_env} is empty or unset; "
                              "export the token first, or put it in a file named by serve.auth_token_file")
        return token
    return None
