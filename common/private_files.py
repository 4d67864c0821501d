"""Folders and files that only the server's own account may have made or may change.

Another account on the machine that could write the standalone data directory, or a file
in it, could plant a URL signing key or a token database credential the scheduler would
then trust, or a symbolic link it would write through. So, as ssh does with its key files,
every place that opens such a path refuses one that is a symbolic link, that another
account owns (root aside), or that group or others may write; a secret must also be
unreadable by them. What the scheduler makes itself is 0700 (folders) or 0600 (files)
whatever the umask. (README, Security; docs/differences.md.)
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

NOT_OURS = 0o022  # group or others may write
NOT_SECRET = 0o044  # group or others may read
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class NotPrivate(Exception):
    """A path the scheduler will not trust: the message is one line naming it and why."""


def private_directory(path: Path, *, own_link_allowed: bool = False) -> None:
    """Make ``path`` (0700) when missing, else check it; leave it 0700 either way.

    ``own_link_allowed``: ``path`` may be a symbolic link this account (or root) made, to
    a folder that passes the same checks (an operator's ``--data-dir`` on another disk).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    found = os.lstat(path)
    if stat.S_ISLNK(found.st_mode) and own_link_allowed:
        _check_owner(path, found, "the symbolic link")
        found = os.stat(path)
    _check(path, found, directory=True)
    os.chmod(path, 0o700)  # readable by others (an older version's 0755): theirs no more


def check_file(path: Path, *, secret: bool = False, directory: bool = False) -> bool:
    """Whether ``path`` exists; raises NotPrivate when it does but may not be trusted."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return False
    _check(path, found, directory=directory, secret=secret)
    return True


def read_file(path: Path, *, secret: bool = False) -> bytes | None:
    """The bytes of ``path`` (None when missing), checked on the open file itself."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotPrivate(_refusal(path, "is a symbolic link")) from None
        raise
    with os.fdopen(fd, "rb") as f:
        _check(path, os.fstat(fd), directory=False, secret=secret)
        return f.read()


def create_file(path: Path, data: bytes) -> bool:
    """Write a new file ``path``, 0600; False (and nothing written) when it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)  # the umask may only take bits away; this puts back the owner's
        f.write(data)
    return True


def private_file(path: Path) -> None:
    """Make ``path`` an empty 0600 file when missing, else check it and any SQLite side
    files beside it (SQLite makes those with the database file's own mode)."""
    if not create_file(path, b""):
        check_file(path)
    for suffix in SQLITE_SIDE_FILES:
        check_file(path.with_name(path.name + suffix))


def _check(path: Path, found: os.stat_result, *, directory: bool, secret: bool = False) -> None:
    if stat.S_ISLNK(found.st_mode):
        raise NotPrivate(_refusal(path, "is a symbolic link"))
    if directory != stat.S_ISDIR(found.st_mode) or not (directory or stat.S_ISREG(found.st_mode)):
        raise NotPrivate(_refusal(path, f"is not a {'directory' if directory else 'file'}"))
    _check_owner(path, found, "it")
    mode = stat.S_IMODE(found.st_mode)
    if mode & NOT_OURS:
        raise NotPrivate(_refusal(path, f"group or others may write it (mode {mode:04o})"))
    if secret and mode & NOT_SECRET:
        raise NotPrivate(_refusal(
            path, f"this secret is readable by group or others (mode {mode:04o}), so it may "
                  f"have leaked: remove it (a new one is made at start) or chmod 600 it"))


def _check_owner(path: Path, found: os.stat_result, what: str) -> None:
    me = os.geteuid()
    if found.st_uid not in (me, 0):
        raise NotPrivate(_refusal(path, f"{what} belongs to another account (uid "
                                        f"{found.st_uid}), not this scheduler's (uid {me})"))


def _refusal(path: Path, why: str) -> str:
    return f"{path}: {why}; another account could have planted or changed it (README, Security)"
