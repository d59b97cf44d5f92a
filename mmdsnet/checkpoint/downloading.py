"""http(s) checkpoints: each URL downloaded once, whole and verified, into a cache.

The cache is torch hub's (``$TORCH_HOME/hub/checkpoints``, where mmengine's
own loader keeps downloads), one file per URL: the URL's file name in a
folder named by a hash of the whole URL, so ``http://h/a/model.pth``,
``http://h/b/model.pth`` and ``model.pth?token=...`` never share an entry.
A download is kept only when it arrived whole: the bytes received must match
``Content-Length``, a name in torch hub's ``name-<sha256 prefix>.pth`` form
must match the file's SHA-256, a server that stops sending fails after
:data:`DOWNLOAD_TIMEOUT_S`, a download larger than the free disk is refused
before it starts, and the partial file is removed on every failure. Nothing
is unpickled here: the caller reads the file weights-only, inside
:func:`naming_the_download` so that a cached file that cannot be read names
its URL and the file to delete.
"""

import contextlib
import hashlib
import os
import os.path as osp
import pickle
import re
import shutil
import tempfile
import urllib.request
from urllib.parse import urlparse

import torch
from mmengine.dist import broadcast_object_list, get_dist_info

#: Seconds a download waits for the server (connection, then each read) before it fails.
DOWNLOAD_TIMEOUT_S = 60.0
# torch hub's convention: the first hex digits of the file's SHA-256 after the
# last '-' of the name (torch.hub.HASH_REGEX takes any length; 8 or more here).
_HUB_HASH = re.compile(r'-([0-9a-f]{8,64})\.[^.]+$')
_CHUNK = 1 << 20


def url_cache_path(url: str) -> str:
    """Where ``url`` is cached: its file name, unchanged, in a folder named by
    16 hex digits of the SHA-256 of the whole URL, in torch hub's checkpoint folder."""
    name = osp.basename(urlparse(url).path)
    if not name:
        raise ValueError(
            f'checkpoint URL {url} names no file; a URL ending in a file name is expected'
        )
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return osp.join(torch.hub.get_dir(), 'checkpoints', key, name)


def _receive(url: str, out, directory: str) -> str:
    """Write the body of ``url`` to ``out``; return its SHA-256. Raise OSError
    when it is larger than the free disk or does not arrive whole."""
    request = urllib.request.Request(url, headers={'User-Agent': 'mmdsnet'})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        length = response.headers.get('Content-Length', '')
        expected = int(length) if length.strip().isdigit() else None
        free = shutil.disk_usage(directory).free
        if expected is not None and expected > free:
            raise OSError(
                f'the server announces {expected} bytes, more than the {free} bytes free '
                f'in {directory}'
            )
        digest = hashlib.sha256()
        received = 0
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
    if expected is not None and received != expected:
        raise OSError(
            f'the download stopped after {received} of the {expected} bytes the server '
            'announced (Content-Length)'
        )
    return digest.hexdigest()


def _download(url: str, cached: str) -> None:
    """Download ``url`` into ``cached`` whole, or leave nothing (OSError naming the URL)."""
    directory = osp.dirname(cached)
    os.makedirs(directory, exist_ok=True)
    fd, partial = tempfile.mkstemp(
        dir=directory, prefix=osp.basename(cached) + '.', suffix='.partial'
    )
    try:
        with os.fdopen(fd, 'wb') as out:
            sha256 = _receive(url, out, directory)
        named = _HUB_HASH.search(osp.basename(urlparse(url).path))
        if named and not sha256.startswith(named.group(1)):
            raise OSError(
                f'its SHA-256 {sha256[: len(named.group(1))]}... does not match the '
                f"{named.group(1)} its name announces (torch hub's name-<sha256>.pth)"
            )
        os.replace(partial, cached)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        with contextlib.suppress(OSError):  # the URL's folder, unless it holds something
            os.rmdir(directory)
        if isinstance(err, OSError):  # URLError, HTTPError, timeouts, a full disk, the checks
            raise OSError(f'could not download checkpoint {url}: {err}; nothing was kept') from err
        raise


def download_checkpoint(url: str) -> str:
    """Download ``url`` once into the cache (:func:`url_cache_path`); return the local path.

    In distributed runs rank 0 downloads first and the others reuse its file
    (or fetch their own on another node); when rank 0's download fails,
    every rank raises its error at once instead of waiting at a barrier.
    """
    cached = url_cache_path(url)
    rank, world_size = get_dist_info()
    for turn in (0, 1):
        error = ''
        if (rank == 0) == (turn == 0) and not osp.exists(cached):
            try:
                _download(url, cached)
            except OSError as err:
                error = str(err)
        if world_size > 1 and turn == 0:
            shared = [error]
            broadcast_object_list(shared, src=0)  # also the barrier after rank 0's turn
            error = shared[0]
        if error:
            raise OSError(error)
    return cached


@contextlib.contextmanager
def naming_the_download(url: str, path: str):
    """Errors reading the cached download ``path`` of ``url`` name both, and the fix."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, pickle.UnpicklingError) as err:
        message = (
            f'{err} (this is the cached download of {url}: delete {path} to download it again)'
        )
        try:
            renamed = type(err)(message)
        except TypeError:  # an exception type that takes other arguments
            renamed = RuntimeError(message)
        raise renamed from err
