"""``.pivot-supervise/server.json``: how clients find (and may talk to) a supervisor.

The file holds ``{"url", "token", "pid"}``.  The token is the API's only credential, so
the file is readable by its owner alone: it is created with mode 0600 (``O_EXCL |
O_NOFOLLOW``, so neither a planted file nor a symlink is written through) inside a
directory of mode 0700, then moved into place atomically; readers never see half a file.

One supervisor per project: a file naming a live pid means a supervisor runs there and a
second one refuses to start.  A file naming a dead pid (a supervisor killed with
SIGKILL cannot clean up) is stale: a new supervisor replaces it and clients ignore it.
On exit a supervisor removes the file only if it still names its own pid *and* token.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .._state_dir import STATE_DIR, make_state_dir

SERVER_FILE = "server.json"


class ServerFileError(Exception):
    """server.json cannot be used (unreadable, malformed); the message says which file."""


class AlreadyRunning(ServerFileError):
    """Another live supervisor serves this project."""

    def __init__(self, path: Path, info: ServerInfo) -> None:
        super().__init__(
            f"another supervisor (pid {info.pid}) is already running for this project "
            f"({info.url}, see {path}); stop it first, or use `pivot-supervise events`, "
            "`status`, `trigger` or `restart` to work with it"
        )
        self.info = info


@dataclass(frozen=True, slots=True)
class ServerInfo:
    url: str
    token: str
    pid: int

    def to_json_obj(self) -> dict[str, Any]:
        return {"url": self.url, "token": self.token, "pid": self.pid}


def server_file(project_root: Path) -> Path:
    return project_root / STATE_DIR / SERVER_FILE


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a running process (a zombie does not count)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; it is someone else's
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no procfs: trust kill()
    return state not in (b"Z", b"X")


def read_server_file(project_root: Path) -> ServerInfo | None:
    """The file's contents, or ``None`` if there is no file.

    Raises :class:`ServerFileError` for a file that exists but is not what we write.
    """
    path = server_file(project_root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServerFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        obj = json.loads(text)
    except ValueError:
        raise ServerFileError(
            f"{path} is not valid JSON; delete it if no supervisor runs"
        ) from None
    if not isinstance(obj, dict):
        raise ServerFileError(f"{path} does not hold an object; delete it if no supervisor runs")
    fields = cast("dict[str, Any]", obj)
    url, token, pid = fields.get("url"), fields.get("token"), fields.get("pid")
    if not isinstance(url, str) or not isinstance(token, str) or type(pid) is not int:
        raise ServerFileError(
            f"{path} lacks a string 'url', a string 'token' or an integer 'pid'; "
            "delete it if no supervisor runs"
        )
    return ServerInfo(url, token, pid)


def live_server(project_root: Path) -> ServerInfo | None:
    """The running supervisor's server info, or ``None`` (no file, or a dead pid's)."""
    info = read_server_file(project_root)
    if info is None or not pid_alive(info.pid):
        return None
    return info


def claim_server_file(project_root: Path, info: ServerInfo) -> Path:
    """Publish ``info`` as this project's server.json.

    Raises :class:`AlreadyRunning` when a live supervisor holds the file.  A fresh file
    is linked into place (``os.link`` fails if another supervisor won a race); a stale
    one (dead pid, or unreadable) is replaced with ``os.replace``.
    """
    directory = project_root / STATE_DIR
    if directory.is_symlink():
        raise ServerFileError(f"{directory} is a symlink; refusing to write the API token there")
    make_state_dir(directory)
    path = directory / SERVER_FILE
    temp = directory / f".{SERVER_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temp, flags, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(info.to_json_obj(), handle)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            try:
                existing = read_server_file(project_root)
            except ServerFileError:
                existing = None  # garbage in place of our file: replace it
            if existing is not None and pid_alive(existing.pid):
                raise AlreadyRunning(path, existing) from None
            os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return path


def release_server_file(project_root: Path, info: ServerInfo) -> None:
    """Remove server.json if it is still ours (same pid and token); never raises."""
    try:
        current = read_server_file(project_root)
    except ServerFileError:
        return
    if current is None or current.pid != info.pid or current.token != info.token:
        return
    with contextlib.suppress(OSError):
        os.unlink(server_file(project_root))
