"""Write a checkpoint so that a reader finds the old file or the complete new one.

The file is written under a temporary name (``PATH.partial``) and renamed
into place; a failed write (a full disk) removes its partial file and raises
:class:`CheckpointSaveError`, leaving ``PATH`` as it was. Used by
``AtomicCheckpointHook`` (Runner checkpoints and ``last_checkpoint``) and by
the converter (``tools/model_converters/dsnet2mmdet.py``).
"""

import glob
import os
import os.path as osp
from typing import Callable, List, Optional

PARTIAL_SUFFIX = '.partial'


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. a full disk); nothing of it was kept."""


def remove_quietly(path: str) -> None:
    """Remove ``path`` if it exists."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def write_atomically(
    path: str,
    write: Callable[[str], None],
    explain_failure: Optional[Callable[[OSError, int], str]] = None,
) -> None:
    """Call ``write(partial)`` to write ``path`` under a temporary name, then rename it.

    Args:
        path (str): The file to write.
        write (callable): Writes the new contents to the path it is given.
        explain_failure (callable, optional): ``(error, bytes_written) -> str``,
            the message of the :class:`CheckpointSaveError` raised when
            writing or renaming fails with an ``OSError``; by default it
            names ``path`` and the error.

    On any failure the partial file is removed and ``path`` is untouched.
    """
    partial = path + PARTIAL_SUFFIX
    try:
        write(partial)
        os.replace(partial, path)
    except OSError as error:
        written = osp.getsize(partial) if osp.isfile(partial) else 0
        remove_quietly(partial)
        if explain_failure is not None:
            message = explain_failure(error, written)
        else:
            message = (
                f'writing {path} failed ({error.strerror or error}); its partial file was '
                f'removed and {path} was left as it was'
            )
        raise CheckpointSaveError(error.errno, message) from error
    except BaseException:
        remove_quietly(partial)
        raise


def write_text_atomically(path: str, text: str, explain_failure=None) -> None:
    """:func:`write_atomically` of a small text file, synced to disk before the rename."""

    def write(partial: str) -> None:
        with open(partial, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, write, explain_failure)


def remove_interrupted_saves(directory: str, logger=None) -> List[str]:
    """Delete the ``*.partial`` files of saves cut short in ``directory``.

    Only safe while no other process writes there (the tools hold the work
    dir's run lock, :func:`~mmdsnet.engine.work_dir_lock.lock_work_dir`): a
    live save in progress has the same name. Returns the removed paths.
    """
    removed = []
    for leftover in sorted(glob.glob(osp.join(directory, f'*{PARTIAL_SUFFIX}'))):
        if logger is not None:
            logger.info(f'removing {leftover}, left by an interrupted save')
        remove_quietly(leftover)
        removed.append(leftover)
    return removed
