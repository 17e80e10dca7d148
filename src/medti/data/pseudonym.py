"""Pseudonymisation of patient identifiers at import time.

A pseudonym is ``P`` + the first 16 hex digits of HMAC-SHA256(salt, original id). The salt
is a site secret: taken from ``$MEDTI_SALT`` or from a file created once (0600) under the
user config dir, so the same patient keeps the same pseudonym across imports on one site
and pseudonyms cannot be reversed by hashing candidate ids without the salt.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


def salt_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("medti")) / "pseudonym.salt"


def load_salt(salt: str | None = None) -> bytes:
    """Explicit salt > $MEDTI_SALT > the site salt file (created on first use)."""
    if salt:
        return salt.encode("utf-8")
    env = os.environ.get("MEDTI_SALT")
    if env:
        return env.encode("utf-8")
    p = salt_path()
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return p.read_text().strip().encode("utf-8")


def pseudonymise(identifier: str, salt: bytes) -> str:
    digest = hmac.new(salt, str(identifier).encode("utf-8"), hashlib.sha256).hexdigest()
    return "P" + digest[:16]


def case_pseudonym(identifier: str, salt: bytes) -> str:
    """Pseudonym for a study/image (used as case_id and file name)."""
    digest = hmac.new(salt, b"case:" + str(identifier).encode("utf-8"), hashlib.sha256).hexdigest()
    return "C" + digest[:16]
