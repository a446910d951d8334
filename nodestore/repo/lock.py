"""A per-node write lock: one writer at a time, a clear error for the second.

The lock is a file holding the owner's pid, made by hard-linking a file that
already holds it (so a lock is never empty).  A lock whose pid is no longer
alive is stale and is taken over.
"""

from __future__ import annotations

import functools
import os
import time
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
        # the pid is written first and the lock appears with it (a hard link): never an empty lock
        tmp = state_dir / f".{LOCK_NAME}.{os.getpid()}.tmp"
        tmp.write_text(str(os.getpid()))
        try:
            os.link(tmp, path)
        except FileExistsError:
            try:
                text = path.read_text().strip()
                pid = int(text or 0)
                age = time.time() - path.stat().st_mtime
            except (OSError, ValueError):
                pid, age, text = 0, 0.0, "?"
            if pid and _alive(pid) and pid != os.getpid():
                raise LockedError(f"node is locked by pid {pid} ({path}); wait for it or remove the file if that process is gone") from None
            if not pid and age < 10:
                # a lock without a pid, just made by a writer of another kind: not stale yet
                raise LockedError(f"node is locked ({path} names no pid yet); try again") from None
            # stale lock (dead owner, or an old one without a pid): take it over
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        finally:
            tmp.unlink(missing_ok=True)
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
