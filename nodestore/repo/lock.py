"""A per-node write lock: one writer at a time, a clear error for the second.

The lock is a file created with O_EXCL holding the owner's pid.  A lock whose
pid is no longer alive is stale and is taken over.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from pathlib import Path

from nodestore.errors import LockedError

LOCK_NAME = "lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def node_lock(state_dir: Path):
    """Hold the write lock of the node whose private state lives in ``state_dir``.

    Re-entrant within one process: nested writers share the outer lock.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    key = str(path.resolve())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid) and pid != os.getpid():
                raise LockedError(f"node is locked by pid {pid} ({path}); wait for it or remove the file if that process is gone") from None
            # stale lock (dead owner or unreadable): take it over
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        break
    else:
        raise LockedError(f"could not take the node lock {path}")
    _HELD[key] = 1
    try:
        yield
    finally:
        _HELD.pop(key, None)
        try:
            path.unlink()
        except FileNotFoundError:
            pass


_HELD: dict[str, int] = {}


def locked(method):
    """Decorator for Node methods that write: hold the node lock while they run."""

    @functools.wraps(method)
    def wrapper(node, *args, **kwargs):
        with node_lock(node.state_dir):
            return method(node, *args, **kwargs)

    return wrapper
