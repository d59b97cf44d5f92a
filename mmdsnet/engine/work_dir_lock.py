"""One training run per work dir.

Two runs in one work dir overwrite each other's checkpoints, and the second
run's start-up would delete the first's save in progress as left by an
interrupted save. A run therefore holds an exclusive ``fcntl.flock`` on
``<work_dir>/.mmdsnet_run.lock`` for as long as it trains. The OS drops the
lock when the process ends in any way (a kill included), so a crashed run
never leaves a stale lock behind; the file itself stays and is harmless.

The lock file is opened without following a symbolic link and must be a
regular file with one link holding nothing but a pid: anyone who can write
into a shared work dir could otherwise point the path at another file of the
user's and have the next run overwrite it with a pid.
"""

import errno
import os
import os.path as osp
import stat
import warnings

LOCK_NAME = '.mmdsnet_run.lock'

# Locks this process holds, by real path of the work dir: a second claim from
# the same process (the tool, then the checkpoint hook) is a no-op. flock
# locks belong to an open file, so the file objects must stay open.
_held = {}


class WorkDirBusyError(RuntimeError):
    """Another live process trains in this work dir."""


class WorkDirLockError(RuntimeError):
    """The lock path holds something a run must not lock or write: a link, a
    directory or other non-file, or a file that is not a run lock."""


# A lock file holds a pid and a newline: anything longer is not one.
_MAX_LOCK_BYTES = 32


def _refuse(path: str, what: str) -> WorkDirLockError:
    return WorkDirLockError(
        f'{path} is {what}, not a run lock this project wrote; a run never follows, '
        'truncates or replaces it. Remove it (or give this run another --work-dir).'
    )


def _holds_a_pid(fd: int) -> bool:
    text = os.pread(fd, _MAX_LOCK_BYTES + 1, 0).strip()
    return text == b'' or text.isdigit()


def _open_lock_file(path: str):
    """Open (or create) ``path`` for reading and writing without following a
    link; return the file object. Raise :class:`WorkDirLockError` naming the
    path when it is not a regular file holding at most a pid."""
    flags = os.O_RDWR | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        fd = None
    if fd is not None:  # created by this run: nothing else lives in it
        return os.fdopen(fd, 'r+')
    try:
        before = os.lstat(path)
    except FileNotFoundError:  # removed meanwhile: start again
        return _open_lock_file(path)
    if stat.S_ISLNK(before.st_mode):
        raise _refuse(path, 'a symbolic link')
    if stat.S_ISDIR(before.st_mode):
        raise _refuse(path, 'a directory')
    if not stat.S_ISREG(before.st_mode):
        raise _refuse(path, 'not a regular file (a fifo, socket or device)')
    try:  # O_NONBLOCK: a fifo swapped in since lstat must not hang the open
        fd = os.open(path, flags | os.O_NONBLOCK)
    except OSError as error:  # swapped for a link (ELOOP) or a directory since lstat
        raise _refuse(path, f'not a regular file ({error.strerror})') from error
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
        problem = 'a file replaced while it was opened'
    elif now.st_nlink != 1:
        problem = f'a file with {now.st_nlink} hard links'
    elif now.st_size > _MAX_LOCK_BYTES or not _holds_a_pid(fd):
        problem = 'a file holding something other than a pid'
    else:
        os.set_blocking(fd, True)
        return os.fdopen(fd, 'r+')
    os.close(fd)
    raise _refuse(path, problem)


def _warn_unlocked(work_dir: str, why: str) -> None:
    warnings.warn(
        f'work dir {work_dir} is not locked: {why}. A second run started in it would '
        "overwrite this run's checkpoints; make sure only one run uses it.",
        RuntimeWarning,
        stacklevel=3,
    )


def _other_pid(lock_file) -> str:
    lock_file.seek(0)
    text = lock_file.read().strip()
    return text if text.isdigit() else 'unknown'


def lock_work_dir(work_dir: str) -> str:
    """Take the work dir's run lock for this process (until it exits or
    :func:`release_work_dir` is called); return the lock file's path.

    Raises :class:`WorkDirBusyError` naming the work dir and the other run's
    pid when a live process holds it, :class:`WorkDirLockError` naming the
    lock path when it is a link, a directory or a file that is not a run
    lock. Where the file system has no ``flock`` (Windows, some network
    mounts) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no protection, as before
        _warn_unlocked(work_dir, 'this system has no fcntl.flock')
        return ''
    os.makedirs(work_dir, exist_ok=True)
    key = osp.realpath(work_dir)
    path = osp.join(key, LOCK_NAME)
    if key in _held:
        return path
    lock_file = _open_lock_file(path)
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            pid = _other_pid(lock_file)
            lock_file.close()
            raise WorkDirBusyError(
                f'work dir {work_dir} is in use by another training run (pid {pid}, '
                f"holding {path}); two runs in one work dir overwrite each other's "
                'checkpoints. Wait for it to end, stop it, or give this run another '
                '--work-dir.'
            ) from error
        lock_file.close()  # flock unsupported here (e.g. some network file systems)
        _warn_unlocked(work_dir, f'its file system does not support flock ({error.strerror})')
        return ''
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f'{os.getpid()}\n')
    lock_file.flush()
    _held[key] = lock_file
    return path


def release_work_dir(work_dir: str) -> None:
    """Drop this process's run lock on ``work_dir`` (if it holds one)."""
    lock_file = _held.pop(osp.realpath(work_dir), None)
    if lock_file is not None:
        lock_file.close()  # closing the file releases the flock
