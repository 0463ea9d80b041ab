"""Who holds a running job's lease: an owner id per worker process, and whether that process is gone."""

from __future__ import annotations

import os
import socket


def make_owner() -> str:
    """A lease owner id: host, pid and a nonce (the host and pid let a worker spot a dead sibling)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_is_dead(owner: str | None) -> bool:
    """True when `owner` was a process on this host that no longer exists (a killed pool child)."""
    if not owner:
        return False
    try:
        host, pid_text, _ = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
