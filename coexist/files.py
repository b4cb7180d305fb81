"""Files coexist creates are owner-only: 0600 files in 0700 directories.

Project files, the journal, logs, reports and the sandbox's state hold names, addresses,
LegacyExchangeDNs and (the sandbox's) client secrets and keys. Modes are given when a file
is created (`os.open(..., mode)`), not fixed afterwards, so there is no moment when another
user could open it; the process umask can only make them stricter.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from coexist.errors import StorageError

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) 0700; an existing directory is left as it is (the
    operator chose its mode)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return path


def write_private(path: Path, data: bytes | str, *, atomic: bool = True) -> Path:
    """Write a file owner-only; `atomic`: through a temporary file and a rename, so a crash
    never leaves half a file. An existing file is replaced by a 0600 one."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    unique = f"{os.getpid()}.{threading.get_ident()}"  # concurrent writers never share one
    target = path.with_name(f".{path.name}.tmp{unique}") if atomic else path
    flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC | (os.O_EXCL if atomic else 0)
    fd = os.open(target, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an existing file (not atomic) keeps its mode otherwise
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(raw)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if atomic:
            target.unlink(missing_ok=True)
        raise
    if atomic:
        os.replace(target, path)
    return path


def write_failed(path: Path, exc: OSError, *, next_step: str) -> StorageError:
    """The StorageError for a file that could not be written (`exc` as the system said it);
    `next_step` names the fix in the caller's words (a flag, a directory)."""
    return StorageError(
        f"cannot write {path}: {exc.strerror or exc}",
        path=str(path),
        cause=str(exc),
        next_step=next_step,
    )


def create_private(path: Path) -> Path:
    """Create an empty file owner-only if it does not exist (SQLite then opens it, and gives
    its -wal and -shm files the same mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    return path
