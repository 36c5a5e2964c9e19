"""Checks on the configured tracking URI that MLflow itself makes slowly or not at all.

MLflow retries a SQLite database it cannot open (a folder, a path whose folder is missing) for
well over a minute before failing with an unrelated message, and retries an unreachable server
for minutes. Both are configuration mistakes a user should hear about at once, by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from anomaly.errors import TrackingStoreError

# An unreachable tracking server fails within about 30 s (MLflow's defaults retry for minutes):
# two retries with backoff, each request given 10 s. Settings already in the environment win.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other kind of store."""
    if not uri.startswith("sqlite:"):
        return None
    # sqlite:///relative.db and sqlite:////absolute.db: what follows the third slash is the path.
    rest = uri[len("sqlite:") :].removeprefix("//")
    path = rest[1:] if rest.startswith("/") else rest
    path = path.split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_tracking_uri(uri: str) -> None:
    """Refuse a tracking URI that cannot work, naming it; set bounded retries for a server.

    Raises
    ------
    TrackingStoreError
        If a SQLite URI names a folder, or a file in a folder that does not exist.
    """
    db = sqlite_path(uri)
    if db is not None:
        if db.is_dir():
            raise TrackingStoreError(
                f"tracking URI {uri}: {db} is a folder, not a SQLite database file; "
                f"point it at a file, e.g. sqlite:///{(db / 'mlflow.db').as_posix()}"
            )
        if not db.parent.is_dir():
            raise TrackingStoreError(
                f"tracking URI {uri}: the folder {db.parent} of the database does not exist"
            )
        return
    if urlparse(uri).scheme in ("http", "https"):
        for name, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)


def require_store(uri: str, origin: str) -> None:
    """Refuse to go on when a SQLite store does not exist yet: reading must not create one.

    ``origin`` says where the URI came from (mlflow.yaml, the environment, the defaults).

    Raises
    ------
    TrackingStoreError
        Naming the URI, the file it points at and where the settings came from.
    """
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise TrackingStoreError(
            f"no tracking store at {uri} ({db.resolve()} does not exist; settings from "
            f"{origin}); run from the project folder, pass --tracking-config, or set "
            "MLFLOW_TRACKING_URI"
        )
