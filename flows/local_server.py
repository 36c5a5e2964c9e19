"""A Prefect server started for ``anomaly serve`` when no ``PREFECT_API_URL`` is set.

Prefect's own temporary server (what a process gets with no API URL) runs without the scheduler
service, so the served deployments' schedules never produce a run, and every other process (the
Prefect CLI, a second shell) starts a temporary server of its own that the served process never
polls. A real ``prefect server start`` on a free local port, owned by this process, has the
scheduler, and its URL can be handed to the CLI and opened in a browser.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from anomaly.errors import AnomalyError

logger = logging.getLogger(__name__)


class LocalServerError(AnomalyError):
    """The local Prefect server did not start."""


@dataclass(frozen=True)
class PrefectApi:
    """Where the served deployments live: ``api_url``, and whether this process started it."""

    api_url: str
    started_here: bool
    log_file: Path | None = None

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(api_url: str, process: subprocess.Popen[bytes], log_file: Path) -> None:
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LocalServerError(
                    f"the local Prefect server exited with code {process.returncode} while "
                    f"starting; its log is {log_file}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{api_url}/health").status_code == 200:
                    return
            time.sleep(0.5)
    raise LocalServerError(
        f"the local Prefect server at {api_url} did not answer within {timeout:.0f} s "
        f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); its log is {log_file}"
    )


@contextlib.contextmanager
def prefect_api(log_dir: str | os.PathLike[str]) -> Iterator[PrefectApi]:
    """The API at ``PREFECT_API_URL``, or a local server started here until the block ends.

    The server's output goes to ``log_dir/prefect-server.log``; it runs in its own session so
    that Ctrl-C reaches this process only, which then stops the server itself.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    given = PREFECT_API_URL.value()
    if given:
        yield PrefectApi(given, started_here=False)
        return
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log_file = Path(log_dir) / "prefect-server.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
    logger.info("Starting a local Prefect server on %s (log: %s)", api_url, log_file)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_healthy(api_url, process, log_file)
        # The flow runs this process starts inherit the URL from its environment.
        os.environ["PREFECT_API_URL"] = api_url
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield PrefectApi(api_url, started_here=True, log_file=log_file)
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
