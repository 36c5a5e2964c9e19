"""A local cache of registered models' files, so a model fetched once is not fetched again.

Entries live under ``$ANOMALY_CACHE_DIR`` (default ``~/.cache/anomaly/models``), one folder per
(tracking store, model name, version, manifest SHA-256 recorded on the version)::

    <root>/<sha256(tracking URI)[:16]>/<name>/v<version>-<manifest sha256[:16]>/

The key holds the recorded digest, so a version whose files are registered again under another
digest is another entry. A hit is checked as a download is (the manifest's digest against the
version's, every file against the manifest) by the caller's ``load``; a copy that fails is
removed and fetched again. Only a copy that loaded enters the cache, by renaming a finished
temporary folder beside it, so a crash or a concurrent run never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from anomaly.errors import ModelFileError

logger = logging.getLogger(__name__)

CACHE_ENV = "ANOMALY_CACHE_DIR"
T = TypeVar("T")


def cache_root() -> Path:
    """``$ANOMALY_CACHE_DIR``, else ``~/.cache/anomaly/models``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "anomaly" / "models"


def entry_path(root: Path, tracking_uri: str, name: str, version: str, digest: str) -> Path:
    """The folder caching ``name`` ``version`` of the store at ``tracking_uri`` with ``digest``."""
    store = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    # quote: a registered model's name may hold characters a file name cannot.
    return root / store / quote(name, safe="") / f"v{version}-{digest[:16]}"


def load_cached(
    entry: Path,
    download: Callable[[Path], Path],
    load: Callable[[Path], T],
) -> T:
    """``load(folder)`` on the cached copy at ``entry``, fetching it with ``download`` if needed.

    ``download(into)`` writes the model into the empty folder ``into`` and returns the folder
    holding it; ``load`` raises :class:`ModelFileError` on files that fail their checks.
    """
    if entry.is_dir():
        try:
            return load(entry)
        except ModelFileError as exc:
            logger.warning("%s: cached model fails its checks (%s); fetching it again", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        fetched = download(tmp / "model")
        result = load(fetched)
        try:
            os.rename(fetched, entry)
        except OSError:
            # Another run cached the same version first; its copy is checked when next loaded.
            logger.debug("%s: cached by another run meanwhile", entry)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
