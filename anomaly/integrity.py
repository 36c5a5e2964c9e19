"""Tamper evidence for saved models, beyond the manifest's checksums.

The manifest's SHA-256 of every file catches damage, not someone who rewrites the manifest as
well. Two checks close that gap:

- **Registry digest**: the SHA-256 of ``manifest.json`` is recorded on the registered model
  version when it is created (a tag written by the registering process) and compared whenever
  that version is loaded, so a model whose files were changed in the artifact store is refused.
- **Signing** (for model folders used outside the registry): with a key in the environment
  variable ``ANOMALY_MODEL_SIGNING_KEY``, saving writes ``manifest.sig``, the HMAC-SHA256 of the
  manifest under that key, and loading refuses a model that is unsigned or signed otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from anomaly.errors import ModelFileError

SIGNING_KEY_ENV = "ANOMALY_MODEL_SIGNING_KEY"
SIGNATURE_FILE = "manifest.sig"
MANIFEST_FILE = "manifest.json"
# Model-version tag holding manifest_digest() of the files registered.
MANIFEST_TAG = "manifest_sha256"


def manifest_digest(directory: str | os.PathLike[str]) -> str:
    """SHA-256 of a saved model's manifest: it lists every file's SHA-256, so it covers them all."""
    path = Path(directory) / MANIFEST_FILE
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelFileError(f"{path}: missing or unreadable manifest ({exc})") from exc


def signing_key() -> bytes | None:
    """The configured signing key, or None when signing is not configured."""
    key = os.environ.get(SIGNING_KEY_ENV, "")
    return key.encode() if key else None


def _signature(directory: Path, key: bytes) -> str:
    path = directory / MANIFEST_FILE
    try:
        return hmac.new(key, path.read_bytes(), hashlib.sha256).hexdigest()
    except OSError as exc:
        raise ModelFileError(f"{path}: missing or unreadable manifest ({exc})") from exc


def sign_manifest(directory: str | os.PathLike[str], key: bytes | None = None) -> Path | None:
    """Write ``manifest.sig`` when a key is given or configured; return its path (None unsigned)."""
    key = key if key is not None else signing_key()
    if key is None:
        return None
    path = Path(directory) / SIGNATURE_FILE
    path.write_text(_signature(Path(directory), key) + "\n")
    return path


def verify_signature(directory: str | os.PathLike[str], key: bytes | None = None) -> None:
    """With a key given or configured, refuse a model that is unsigned or signed with another key.

    Raises
    ------
    ModelFileError
        Naming the model folder and what is wrong with its signature.
    """
    key = key if key is not None else signing_key()
    if key is None:
        return
    folder = Path(directory)
    path = folder / SIGNATURE_FILE
    if not path.is_file():
        raise ModelFileError(
            f"{folder}: model is not signed, and {SIGNING_KEY_ENV} is set, so only signed models "
            "load; sign it by saving it again with the key set"
        )
    found = path.read_text().strip()
    if not hmac.compare_digest(found, _signature(folder, key)):
        raise ModelFileError(
            f"{path}: signature does not match the manifest under the configured key "
            "(modified after signing, or signed with another key)"
        )


def verify_digest(directory: str | os.PathLike[str], expected: str, what: str) -> None:
    """Refuse a model whose manifest is not the one recorded for ``what`` (a model version)."""
    found = manifest_digest(directory)
    if not hmac.compare_digest(found, expected):
        raise ModelFileError(
            f"{what}: model files differ from those registered (manifest SHA-256 {found[:12]}…, "
            f"recorded {expected[:12]}…): modified in the artifact store; refusing to load"
        )
