"""One training run per work dir.

Two runs in one work dir overwrite each other's checkpoints, and the second
run's start-up would delete the first's save in progress as left by an
interrupted save. A run therefore holds an exclusive ``fcntl.flock`` on
``<work_dir>/.mmdsnet_run.lock`` for as long as it trains. The OS drops the
lock when the process ends in any way (a kill included), so a crashed run
never leaves a stale lock behind; the file itself stays and is harmless.
"""

import errno
import os
import os.path as osp

LOCK_NAME = '.mmdsnet_run.lock'

# Locks this process holds, by real path of the work dir: a second claim from
# the same process (the tool, then the checkpoint hook) is a no-op. flock
# locks belong to an open file, so the file objects must stay open.
_held = {}


class WorkDirBusyError(RuntimeError):
    """Another live process trains in this work dir."""


def _other_pid(lock_file) -> str:
    lock_file.seek(0)
    text = lock_file.read().strip()
    return text if text.isdigit() else 'unknown'


def lock_work_dir(work_dir: str) -> str:
    """Take the work dir's run lock for this process (until it exits or
    :func:`release_work_dir` is called); return the lock file's path.

    Raises :class:`WorkDirBusyError` naming the work dir and the other run's
    pid when a live process holds it. Where the file system has no ``flock``
    (Windows, some network mounts) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no protection, as before
        return ''
    os.makedirs(work_dir, exist_ok=True)
    key = osp.realpath(work_dir)
    path = osp.join(key, LOCK_NAME)
    if key in _held:
        return path
    lock_file = open(path, 'a+')
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
