"""The key that signs the web view's session cookies when ``COURIER_SECRET_KEY`` is not set.

Made once (32 random bytes, hex) in a file only its owner can read, beside the SQLite database, and
read by every process after: gunicorn's workers, restarted or not, must sign and check cookies with
the same key, or a sign-in would work on one worker only. Created with O_EXCL, so of two workers
starting at once one writes and the other reads what it wrote.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path


def load_or_create(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process is writing it: a few milliseconds at most
            text = path.read_text(encoding="ascii").strip()
            if text:
                return text
            time.sleep(0.01)
        raise RuntimeError(f"{path} is empty: remove it, or set COURIER_SECRET_KEY") from None
    key = secrets.token_hex(32)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    return key
