"""Passwords kept out of what FleetWatch prints and logs: URLs shown as ``user:***@host``.

Light on purpose (the standard library only): settings, DAG files and the Spark operator use it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)(?P<password>[^@\s'\"]+)(?=@)")
_SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (unchanged when it holds none)."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\g<head>***", str(text))


def secrets_in(env: dict[str, str]) -> list[str]:
    """The secret strings in environment variables: URL passwords, and values of ``*PASSWORD*`` keys."""
    found = []
    for key, value in env.items():
        if _SECRET_KEY.search(key) and value:
            found.append(value)
        for m in _URL_PASSWORD.finditer(str(value)):
            found += sorted({m.group("password"), unquote(m.group("password"))})
    return found
