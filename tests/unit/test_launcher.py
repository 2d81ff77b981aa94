"""The launcher's API command (app.tools.launcher), built without starting anything:
API_PROCESSES uvicorn processes on one port, sharing one SESSION_SECRET when several."""

from __future__ import annotations

import sys

import pytest
from uvicorn.main import main as uvicorn_cli

from app.core.settings import Settings
from app.tools.launcher import api_command, api_env


@pytest.mark.parametrize("processes", [1, 4])
def test_the_api_runs_as_api_processes_uvicorn_workers_on_one_port(processes: int) -> None:
    command = api_command(Settings(api_processes=processes, host="127.0.0.1", port=8123))
    assert command[:3] == [sys.executable, "-m", "uvicorn"]
    parsed = uvicorn_cli.make_context("uvicorn", command[3:]).params  # uvicorn's own parsing, nothing run
    assert parsed["workers"] == processes and parsed["factory"] is True
    assert (parsed["app"], parsed["host"], parsed["port"]) == ("app.api.main:create_app", "127.0.0.1", 8123)


def test_several_api_processes_share_one_session_secret_made_by_the_launcher() -> None:
    env = {"PATH": "/usr/bin"}
    shared = api_env(Settings(api_processes=3, session_secret=None), env)
    assert shared["PATH"] == "/usr/bin" and len(shared["SESSION_SECRET"]) >= 32
    assert "SESSION_SECRET" not in env  # the caller's mapping is left as it was
    assert api_env(Settings(api_processes=3, session_secret=None), env)["SESSION_SECRET"] != shared["SESSION_SECRET"]


def test_one_api_process_or_a_configured_secret_needs_none_made() -> None:
    assert "SESSION_SECRET" not in api_env(Settings(api_processes=1, session_secret=None), {})
    configured = {"SESSION_SECRET": "from-the-operator"}
    assert api_env(Settings(api_processes=3, session_secret="from-the-operator"), configured) == configured
