"""What may go into the journal's JSON columns.

The journal is a plain file (or a shared database) that operators copy, attach to tickets and
keep for months. Secrets must never land in it: callers redact before recording (drop the key
or replace the value with ``"[redacted]"`` under a neutral key). This guard refuses, with
``ValueError``, any mapping that still carries a secret-looking key at any depth, and any
string that looks like a bearer token or a JWT. It also refuses values that JSON cannot
round-trip, so what a test reads back is what the caller wrote.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

# Compared after lower-casing and removing '_' and '-': "client_secret", "clientSecret",
# "Client-Secret" all match. Substrings catch Graph's "passwordProfile" / "newPassword" and
# "secretText" (passwordCredential) as well.
_SECRET_SUBSTRINGS = ("password", "passwd", "secret")
_SECRET_KEYS = frozenset(
    {
        "accesstoken",
        "refreshtoken",
        "idtoken",
        "authorization",
        "proxyauthorization",
        "clientassertion",
        "apikey",
        "privatekey",
        "cookie",
        "setcookie",
        "sessionkey",
    }
)
_BEARER = re.compile(r"(?i)^\s*(bearer|basic)\s+\S")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True when a mapping key names a credential."""
    # Cached: the journal sees the same few hundred key names over and over.
    norm = key.lower().replace("_", "").replace("-", "")
    return norm in _SECRET_KEYS or any(s in norm for s in _SECRET_SUBSTRINGS)


def check_json(value: Any, where: str) -> None:
    """Raise ValueError/TypeError unless `value` is secret-free, JSON-round-trippable data."""
    if not _clean(value):
        _walk(value, where)  # the same checks again, naming the path of the first refusal
        raise AssertionError(f"{where}: refused without a reason")  # pragma: no cover


def _clean(value: Any) -> bool:
    """`_walk` without building the path of every value (the journal checks every record)."""
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return not (_BEARER.match(value) or ("eyJ" in value and _JWT.search(value)))
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or is_secret_key(key) or not _clean(item):
                return False
        return True
    if isinstance(value, list | tuple):
        return all(map(_clean, value))
    return False


def _walk(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | int | float):
        return
    if isinstance(value, str):
        if _BEARER.match(value) or ("eyJ" in value and _JWT.search(value)):
            raise ValueError(f"{path}: looks like a credential; redact it before journaling")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: JSON object keys must be strings, got {key!r}")
            if is_secret_key(key):
                raise ValueError(
                    f"{path}.{key}: secrets never go in the journal; redact before recording"
                )
            _walk(item, f"{path}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]")
        return
    raise TypeError(f"{path}: {type(value).__name__} is not JSON data")
