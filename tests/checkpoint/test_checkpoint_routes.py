"""Checkpoint routes that must not run code or accept what cannot be loaded
faithfully (issue 20): http(s) URLs, a checkpoint's stored config, the
HistoryBuffer statistics table, auto-resume's last_checkpoint, weights of the
wrong kind, tensors larger than their storage, and files that are not
checkpoints. Malicious files are served by an HTTP server on 127.0.0.1 that
each test starts and stops; nothing leaves the machine."""

import functools
import hashlib
import http.server
import os
import os.path as osp
import pickle
import subprocess
import sys
import threading
import time
import tracemalloc
import types

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, TESTS_ROOT
from mmengine.logging import HistoryBuffer, MMLogger
from mmengine.runner.checkpoint import _load_checkpoint

import mmdsnet  # noqa: F401  (installs the loaders and guards under test)
from mmdsnet.checkpoint import downloading, read_checkpoint, url_cache_path
from mmdsnet.engine import CheckpointFitHook, CheckpointMismatchError
from mmdsnet.models import DSNet
from mmdsnet.testing import reference_for

TRUST_CONFIG_ENV = 'MMDSNET_TRUST_CHECKPOINT_CONFIG'  # the documented opt-in


class Payload:
    """Pickles as a call that writes ``marker``: runs only under a full unpickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f'open({self.marker!r}, "w").write("ran")',))


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A directory served on 127.0.0.1, a marker path, and torch hub's cache in tmp."""
    root = tmp_path / 'www'
    root.mkdir()
    requests = []
    special = {}  # URL path -> function(handler) answering it instead of the file

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path in special:
                requests.append(self.path)
                return special[self.path](self)
            return super().do_GET()

        def log_message(self, *args):
            if self.path not in special:
                requests.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(Handler, directory=str(root))
    )
    server.daemon_threads = True  # a stalled answer does not hold up the shutdown
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    marker = tmp_path / 'marker'
    torch.save({'state_dict': {'w': torch.zeros(2)}, 'x': Payload(marker)}, root / 'evil.pth')
    yield types.SimpleNamespace(
        root=root,
        url=f'http://127.0.0.1:{server.server_address[1]}/',
        marker=marker,
        requests=requests,
        special=special,
        hub=tmp_path,
    )
    server.shutdown()
    server.server_close()
    thread.join()


# ---------------------------------------------------------------------------
# 1. http(s) checkpoints load weights-only, once cached
# ---------------------------------------------------------------------------
def test_url_checkpoint_is_loaded_weights_only_and_cached(served):
    """mmengine's loader (load_from, --resume, tools/test.py, inferencers) and the
    cached file's later loads refuse a malicious pickle; a benign one loads once."""
    with pytest.raises(pickle.UnpicklingError, match='evil.pth refused'):
        _load_checkpoint(served.url + 'evil.pth', map_location='cpu')
    with pytest.raises(pickle.UnpicklingError):  # again, from the cache
        _load_checkpoint(served.url + 'evil.pth', map_location='cpu')
    assert not served.marker.exists()
    assert served.requests.count('/evil.pth') == 1

    torch.save({'state_dict': {'w': torch.ones(2)}}, served.root / 'good.pth')
    for _ in range(2):
        loaded = _load_checkpoint(served.url + 'good.pth', map_location='cpu')
        assert torch.equal(loaded['state_dict']['w'], torch.ones(2))
    assert served.requests.count('/good.pth') == 1
    # The cached copy is read weights-only too.
    os.replace(served.root / 'evil.pth', url_cache_path(served.url + 'good.pth'))
    with pytest.raises(pickle.UnpicklingError):
        _load_checkpoint(served.url + 'good.pth', map_location='cpu')
    assert not served.marker.exists()


def test_url_cache_is_keyed_by_the_whole_url(served):
    for folder, value in [('a', 1.0), ('b', 2.0)]:
        (served.root / folder).mkdir()
        torch.save({'w': torch.full((2,), value)}, served.root / folder / 'model.pth')
    torch.save({'w': torch.full((2,), 3.0)}, served.root / 'model.pth')
    for url, value in [('a/model.pth', 1.0), ('b/model.pth', 2.0), ('model.pth?token=1', 3.0)]:
        for _ in range(2):  # the second load from the cache
            loaded = _load_checkpoint(served.url + url, map_location='cpu')
            assert torch.equal(loaded['w'], torch.full((2,), value)), url
    torch.save({'w': torch.full((2,), 4.0)}, served.root / 'model.pth')
    loaded = _load_checkpoint(served.url + 'model.pth', map_location='cpu')
    assert torch.equal(loaded['w'], torch.full((2,), 4.0))  # not the ?token=1 entry
    assert sorted(served.requests) == [
        '/a/model.pth',
        '/b/model.pth',
        '/model.pth',
        '/model.pth?token=1',
    ]


def test_url_with_torch_hub_hash_in_its_name_is_checked(served):
    torch.save({'w': torch.ones(2)}, served.root / 'net.pth')
    sha256 = hashlib.sha256((served.root / 'net.pth').read_bytes()).hexdigest()
    os.replace(served.root / 'net.pth', served.root / f'net-{sha256[:8]}.pth')
    loaded = _load_checkpoint(served.url + f'net-{sha256[:8]}.pth', map_location='cpu')
    assert torch.equal(loaded['w'], torch.ones(2))
    wrong = '0' * 8 if not sha256.startswith('0' * 8) else '1' * 8
    os.replace(served.root / f'net-{sha256[:8]}.pth', served.root / f'net-{wrong}.pth')
    url = served.url + f'net-{wrong}.pth'
    with pytest.raises(OSError, match=rf'could not download checkpoint {url}: its SHA-256 '):
        _load_checkpoint(url, map_location='cpu')
    assert not osp.exists(osp.dirname(url_cache_path(url)))  # nothing kept, no .partial


def _cut_short(handler):
    handler.send_response(200)
    handler.send_header('Content-Length', '1000')
    handler.end_headers()
    handler.wfile.write(b'PK\x03\x04' + b'x' * 496)


def _stall(handler):
    handler.send_response(200)
    handler.send_header('Content-Length', '1000')
    handler.end_headers()
    handler.wfile.write(b'PK\x03\x04')
    handler.wfile.flush()
    time.sleep(5)


def _one_terabyte(handler):
    handler.send_response(200)
    handler.send_header('Content-Length', str(10**12))
    handler.end_headers()


@pytest.mark.parametrize(
    'answer, message',
    [
        (_cut_short, 'the download stopped after 500 of the 1000 bytes'),
        (_stall, 'timed out'),
        (_one_terabyte, 'the server announces 1000000000000 bytes, more than the .* bytes free'),
    ],
)
def test_url_download_that_does_not_arrive_whole_keeps_nothing(
    served, monkeypatch, answer, message
):
    monkeypatch.setattr(downloading, 'DOWNLOAD_TIMEOUT_S', 0.5)
    served.special['/cut.pth'] = answer
    url = served.url + 'cut.pth'
    start = time.monotonic()
    for attempt in (1, 2):  # nothing was cached: the second load downloads again
        with pytest.raises(OSError, match=rf'could not download checkpoint {url}: .*{message}'):
            _load_checkpoint(url, map_location='cpu')
        assert not osp.exists(osp.dirname(url_cache_path(url)))
        assert served.requests.count('/cut.pth') == attempt
    assert time.monotonic() - start < 30


def test_unreadable_cached_download_names_its_url_and_the_file_to_delete(served):
    torch.save({'w': torch.ones(2)}, served.root / 'net.pth')
    url = served.url + 'net.pth'
    _load_checkpoint(url, map_location='cpu')
    cached = url_cache_path(url)
    with open(cached, 'r+b') as f:
        f.truncate(100)
    with pytest.raises(RuntimeError, match=rf'cached download of {url}: delete {cached} to'):
        _load_checkpoint(url, map_location='cpu')
    model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=url))
    with pytest.raises(RuntimeError, match=rf'cached download of {url}: delete {cached} to'):
        model.init_weights()


def test_failed_download_of_rank_0_fails_every_rank_with_its_message(served, monkeypatch):
    monkeypatch.setattr(downloading, 'get_dist_info', lambda: (1, 2))
    message = 'could not download checkpoint X: HTTP Error 404: File not found; nothing was kept'
    monkeypatch.setattr(
        downloading, 'broadcast_object_list', lambda data, src: data.__setitem__(0, message)
    )
    with pytest.raises(OSError, match=f'^{message}$'):
        downloading.download_checkpoint(served.url + 'missing.pth')
    assert served.requests == []  # rank 1 did not try on its own


def test_url_routes_of_runner_inferencer_and_necks(served, drop_runner_globals, tmp_path):
    """load_from=URL and resume from a URL (Runner), DetInferencer(weights=URL) and a
    DSFPN Pretrained init_cfg URL all refuse the malicious file without running it."""
    from mmdet.apis import DetInferencer
    from mmengine.runner import Runner
    from toy_task import ToyRegressor

    from mmdsnet.models import DSFPN

    url = served.url + 'evil.pth'
    for resume in (False, True):
        runner = Runner(
            model=ToyRegressor(),
            work_dir=str(tmp_path / f'work{resume}'),
            experiment_name=f'url_route_{resume}',
            load_from=url,
            resume=resume,
        )
        with pytest.raises(pickle.UnpicklingError):
            runner.load_or_resume()
    with pytest.raises(pickle.UnpicklingError):
        DetInferencer(model=dict(model=dict(type='DSNet')), weights=url, device='cpu')
    neck = DSFPN(
        [64, 128, 320, 512],
        64,
        num_outs=5,
        ds_num_heads=1,
        init_cfg=dict(type='Pretrained', checkpoint=url),
    )
    with pytest.raises(pickle.UnpicklingError):
        neck.init_weights()
    assert not served.marker.exists()
    # A benign neck checkpoint loads through the same route.
    torch.save(neck.state_dict(), served.root / 'neck.pth')
    neck2 = DSFPN(
        [64, 128, 320, 512],
        64,
        num_outs=5,
        ds_num_heads=1,
        init_cfg=dict(type='Pretrained', checkpoint=served.url + 'neck.pth'),
    )
    neck2.init_weights()
    for key, value in neck.state_dict().items():
        assert torch.equal(neck2.state_dict()[key], value), key
    with pytest.raises(
        OSError, match=r'could not download checkpoint .*missing\.pth: HTTP Error 404'
    ):
        _load_checkpoint(served.url + 'missing.pth')


def test_named_model_zoo_schemes_load_weights_only(served, monkeypatch):
    """torchvision:// (and open-mmlab://, mmcls://) resolve to a URL inside mmengine."""
    import mmengine.runner.checkpoint as mmengine_checkpoint

    monkeypatch.setattr(
        mmengine_checkpoint, 'get_torchvision_models', lambda: {'evil': served.url + 'evil.pth'}
    )
    with pytest.raises(pickle.UnpicklingError):
        _load_checkpoint('torchvision://evil')
    assert not served.marker.exists()


def test_backbone_pretrained_url(served):
    """A DSNet Pretrained URL: a malicious file is refused, a benign one loads with the
    same fit checks as a local file (a wrong arch is refused)."""
    url = served.url + 'evil.pth'
    with pytest.raises(RuntimeError, match='evil.pth refused'):
        DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=url)).init_weights()
    assert not served.marker.exists()

    reference = reference_for('tiny')
    torch.save(reference.state_dict(), served.root / 'tiny.pth')
    model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=served.url + 'tiny.pth'))
    model.init_weights()
    expected = reference.state_dict()['patch_embed1.proj.weight']
    assert torch.equal(model.state_dict()['patch_embeds.0.weight'], expected)
    narrow = dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 4, 1), num_heads=(1, 2, 5, 8))
    other = DSNet(narrow, init_cfg=dict(type='Pretrained', checkpoint=served.url + 'tiny.pth'))
    with pytest.raises(RuntimeError, match='do not fit this DSNet'):
        other.init_weights()
    assert served.requests.count('/tiny.pth') == 1


def test_backbone_pretrained_url_fails_like_a_local_file(served, tmp_path):
    """A URL takes the local file's route once downloaded: a checkpoint missing most
    of the backbone, or holding a NaN, fails with the local file's error."""
    reference = reference_for('tiny').state_dict()
    half = {k: v for k, v in reference.items() if not k.startswith('blocks3.')}
    diverged = dict(reference, **{'blocks4.0.mlp.fc2.bias': torch.full((512,), float('nan'))})
    for name, state, error, start in [
        (
            'half.pth',
            half,
            CheckpointMismatchError,
            'Only 238/422 DSNet tensors found weights in FILE',
        ),
        (
            'diverged.pth',
            diverged,
            ValueError,
            "FILE: weight 'stages.3.0.mlp.fc2.bias' (512,) holds NaN",
        ),
    ]:
        local = tmp_path / name
        torch.save(state, local)
        torch.save(state, served.root / name)
        messages = []
        for source, path in [(str(local), str(local)), (served.url + name, None)]:
            model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=source))
            with pytest.raises(error) as raised:
                model.init_weights()
            path = path or url_cache_path(served.url + name)  # a URL's errors name its download
            messages.append(str(raised.value).replace(path, 'FILE'))
        assert messages[0] == messages[1], messages
        assert messages[0].startswith(start), messages[0]
        assert served.requests.count('/' + name) == 1


@pytest.mark.slow
@pytest.mark.integration
def test_tools_test_with_a_url_runs_no_code(served, tmp_path):
    config = tmp_path / 'toy.py'
    config.write_text(
        "custom_imports = dict(imports=['toy_task'], allow_failed_imports=False)\n"
        "model = dict(type='ToyRegressor')\n"
        'test_dataloader = dict(batch_size=4, num_workers=0,\n'
        "    dataset=dict(type='ToyRegressionDataset', n=8),\n"
        "    sampler=dict(type='DefaultSampler', shuffle=False),\n"
        "    collate_fn=dict(type='default_collate'))\n"
        "test_evaluator = dict(type='ToyMSE')\n"
        "test_cfg = dict(type='TestLoop')\n"
    )
    env = dict(os.environ, TORCH_HOME=str(served.hub / 'torch_home'))
    env['PYTHONPATH'] = os.pathsep.join(p for p in (TESTS_ROOT, env.get('PYTHONPATH')) if p)
    result = subprocess.run(
        [sys.executable, 'tools/test.py', str(config), served.url + 'evil.pth']
        + ['--work-dir', str(tmp_path / 'work')],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert 'evil.pth refused' in result.stderr, result.stderr[-2000:]
    assert not served.marker.exists()


def test_auto_resume_stays_inside_the_work_dir(tmp_path):
    """A last_checkpoint naming a URL or a file outside the work dir is refused."""
    from mmengine.runner import runner as runner_module

    work = tmp_path / 'work'
    work.mkdir()
    inside = work / 'epoch_1.pth'
    for named, message in [
        ('http://127.0.0.1:9/epoch_1.pth', 'a URL: auto-resume only resumes'),
        (str(tmp_path / 'elsewhere.pth'), 'outside the work dir'),
        (str(work / '..' / 'elsewhere.pth'), 'outside the work dir'),
    ]:
        (work / 'last_checkpoint').write_text(named)
        with pytest.raises(ValueError, match=message):
            runner_module.find_latest_checkpoint(str(work))
    (work / 'last_checkpoint').write_text(str(inside))
    assert runner_module.find_latest_checkpoint(str(work)) == str(inside)


# ---------------------------------------------------------------------------
# 2. a checkpoint's stored config runs only when trusted
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('where', ['meta', 'message_hub'])
@pytest.mark.parametrize('kind', ['det', 'seg'])
def test_inferencer_does_not_run_a_stored_config(
    tmp_path, monkeypatch, kind, where, drop_runner_globals
):
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer

    inferencer = DetInferencer if kind == 'det' else MMSegInferencer
    marker = tmp_path / 'marker'
    cfg_text = f"open({str(marker)!r}, 'w').write('ran')\nmodel = dict(type='NoSuchModel')\n"
    stored = (
        {'meta': {'cfg': cfg_text}}
        if where == 'meta'
        else {'message_hub': {'runtime_info': {'cfg': cfg_text}}}
    )
    path = tmp_path / 'stored_cfg.pth'
    torch.save(dict(stored, state_dict={}), path)
    monkeypatch.delenv(TRUST_CONFIG_ENV, raising=False)
    with pytest.raises(ValueError, match=f'without model=.*{TRUST_CONFIG_ENV}=1'):
        inferencer(model=None, weights=str(path), device='cpu')
    assert not marker.exists()
    monkeypatch.setenv(TRUST_CONFIG_ENV, '1')
    with pytest.raises(Exception, match='NoSuchModel'):
        inferencer(model=None, weights=str(path), device='cpu')
    assert marker.read_text() == 'ran'


# ---------------------------------------------------------------------------
# 3. HistoryBuffer's shared statistics table
# ---------------------------------------------------------------------------
def test_checkpoint_cannot_rebind_history_buffer_statistics(tmp_path, monkeypatch):
    buffer = HistoryBuffer([1.0, 3.0], [1, 1])
    table = dict(HistoryBuffer._statistics_methods)
    with monkeypatch.context() as patch:
        patch.setattr(
            HistoryBuffer,
            '__getstate__',
            lambda self: dict(self.__dict__, statistics_methods={'mean': HistoryBuffer.max}),
        )
        torch.save({'message_hub': {'log_scalars': {'loss': buffer}}}, tmp_path / 'rebind.pth')
    try:
        with pytest.raises(pickle.UnpicklingError, match='statistics_methods'):
            _load_checkpoint(str(tmp_path / 'rebind.pth'))
        assert HistoryBuffer([1.0, 3.0], [1, 1]).statistics('mean') == 2.0
    finally:
        HistoryBuffer._statistics_methods.clear()
        HistoryBuffer._statistics_methods.update(table)
    # What mmengine itself saves still loads, as a plain HistoryBuffer.
    torch.save({'message_hub': {'log_scalars': {'loss': buffer}}}, tmp_path / 'plain.pth')
    loaded = _load_checkpoint(str(tmp_path / 'plain.pth'))['message_hub']['log_scalars']['loss']
    assert type(loaded) is HistoryBuffer
    assert loaded.statistics('mean') == 2.0 and '_statistics_methods' not in vars(loaded)


# ---------------------------------------------------------------------------
# numpy arrays of Runner checkpoints and .pdparams: no bigger than their bytes
# ---------------------------------------------------------------------------
class DeclaredArray:
    """Pickles as numpy's _reconstruct of a 2 GB float64 array and no values."""

    def __reduce__(self):
        reconstruct = np.zeros(0).__reduce__()[0]  # numpy's multiarray._reconstruct
        return (reconstruct, (np.ndarray, (250_000_000,), np.dtype('f8')))


def _history(**state):
    buffer = HistoryBuffer([1.0, 3.0], [1, 1])
    buffer.__dict__.update(state)
    return buffer


HUB_KEY = 'message_hub.log_scalars.train/loss'
BAD_ARRAYS = {
    'meta: declared 2.5e8 values': (
        {'meta': {'eta': DeclaredArray()}},
        r"'meta.eta' is a numpy array declaring 250000000 elements .* over 8 bytes",
    ),
    'history: declared 2.5e8 values': (
        {'message_hub': {'log_scalars': {'train/loss': _history(_log_history=DeclaredArray())}}},
        rf"'{HUB_KEY}._log_history' has shape \(250000000,\), dtype float64, not contiguous",
    ),
    'history: 2-D': (
        {'message_hub': {'log_scalars': {'train/loss': _history(_count_history=np.ones((2, 2)))}}},
        rf"'{HUB_KEY}._count_history' has shape \(2, 2\).* 1-D contiguous numeric",
    ),
    'history: longer than max_length': (
        {
            'message_hub': {
                'log_scalars': {'train/loss': _history(max_length=2, _log_history=np.ones(5))}
            }
        },
        rf"'{HUB_KEY}._log_history' has shape \(5,\).* at most max_length=2",
    ),
    'history: max_length not an int': (
        {'message_hub': {'log_scalars': {'train/loss': _history(max_length=2.5)}}},
        rf"'{HUB_KEY}.max_length' is 2.5; a positive int",
    ),
}


def _assert_refused_in_bounded_memory(load, path, message):
    tracemalloc.start()  # numpy reports its allocations to tracemalloc
    try:
        with pytest.raises(pickle.UnpicklingError, match=rf'checkpoint {path} refused: {message}'):
            load(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6


@pytest.mark.parametrize('case', sorted(BAD_ARRAYS))
def test_runner_checkpoint_numpy_arrays_are_bounded_by_their_bytes(tmp_path, case):
    contents, message = BAD_ARRAYS[case]
    path = tmp_path / 'bomb.pth'
    torch.save({'state_dict': {'w': torch.zeros(2)}, **contents}, path)
    assert path.stat().st_size < 5000
    _assert_refused_in_bounded_memory(_load_checkpoint, path, message)


@pytest.mark.parametrize(
    'value, message',
    [
        (DeclaredArray(), r"'x' is a numpy array declaring 250000000 elements"),
        (np.array([1, 'a'], dtype=object), r"'x' is a numpy array of dtype object; numeric"),
    ],
)
def test_pdparams_numpy_arrays_are_bounded_and_numeric(tmp_path, value, message):
    path = tmp_path / 'bomb.pdparams'
    with open(path, 'wb') as f:
        pickle.dump({'x': value}, f, protocol=4)
    _assert_refused_in_bounded_memory(read_checkpoint, path, message)


# ---------------------------------------------------------------------------
# 4, 5 and 10: what a weight may be, in the backbone loader and CheckpointFitHook
# ---------------------------------------------------------------------------
KEY_PUBLIC = 'blocks3.1.mlp.fc1.weight'
# Layouts are checked on the file's own names, values after the conversion to ours.
KEY_EITHER = r'(blocks3\.1|stages\.2\.1)\.mlp\.fc1\.weight'


def _bad_weight(kind, like):
    if kind == 'complex NaN':
        return torch.full(like.shape, complex(float('nan'), 0), dtype=torch.complex64)
    if kind == 'float64 beyond float32':
        return torch.full(like.shape, 1e300, dtype=torch.float64)
    if kind == 'quantized':
        return torch.quantize_per_tensor(like.float(), 0.1, 0, torch.qint8)
    if kind == 'int':
        return torch.ones(like.shape, dtype=torch.int64)
    if kind == 'bool':
        return torch.ones(like.shape, dtype=torch.bool)
    if kind == 'sparse':
        return like.to_sparse()
    if kind == 'meta':
        return torch.empty(like.shape, device='meta')
    if kind == 'expanded':
        return torch.zeros(1).expand(50_000_000)
    raise AssertionError(kind)


BAD = {
    'complex NaN': 'is torch.complex64, which does not convert',
    'float64 beyond float32': 'holds Inf values after conversion to torch.float32',
    'quantized': 'is quantized',
    'int': 'is torch.int64, which does not convert',
    'bool': 'is torch.bool, which does not convert',
    'sparse': 'has layout torch.sparse_coo',
    'meta': 'is a meta tensor',
    'expanded': 'declares 50000000 elements .* storage holds 1',
}


@pytest.mark.parametrize('kind', sorted(BAD))
def test_backbone_loader_refuses_weights_it_cannot_load_faithfully(tmp_path, kind):
    reference = reference_for('tiny').state_dict()
    sd = dict(reference, **{KEY_PUBLIC: _bad_weight(kind, reference[KEY_PUBLIC])})
    path = tmp_path / 'bad.pth'
    torch.save(sd, path)
    model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError, match=rf"bad\.pth: .*'{KEY_EITHER}'.* {BAD[kind]}"):
        model.init_weights()


def _fit_runner(tmp_path, load_from, resume=False):
    from toy_task import ToyRegressor

    return types.SimpleNamespace(
        model=ToyRegressor(),
        logger=MMLogger.get_instance('fit_hook_test'),
        _load_from=load_from,
        _resume=resume,
        work_dir=str(tmp_path),
    )


@pytest.mark.parametrize('kind', sorted(BAD))
def test_fit_hook_refuses_weights_it_cannot_load_faithfully(tmp_path, kind):
    runner = _fit_runner(tmp_path, 'bad.pth')
    state = dict(runner.model.state_dict())
    state['fc.weight'] = _bad_weight(kind, state['fc.weight'])
    with pytest.raises(CheckpointMismatchError, match=rf"bad\.pth: .*'fc.weight'.* {BAD[kind]}"):
        CheckpointFitHook().after_load_checkpoint(runner, {'state_dict': state})


KEY_VAR_PUBLIC = 'blocks1.0.norm1.running_var'
KEY_VAR_EITHER = r'(blocks1\.0|stages\.0\.0)\.norm1\.running_var'


def test_backbone_loader_refuses_a_negative_batchnorm_variance(tmp_path):
    reference = reference_for('tiny').state_dict()
    variance = reference[KEY_VAR_PUBLIC].clone().fill_(1.0)
    variance[3] = -1.0
    path = tmp_path / 'bad.pth'
    torch.save(dict(reference, **{KEY_VAR_PUBLIC: variance}), path)
    model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(
        ValueError, match=rf"bad\.pth: BatchNorm variance '{KEY_VAR_EITHER}'.* 1 negative values"
    ):
        model.init_weights()


def test_backbone_loader_warns_of_weights_that_overflow_in_the_forward(tmp_path):
    reference = reference_for('tiny').state_dict()
    path = tmp_path / 'huge.pth'
    torch.save(dict(reference, **{KEY_PUBLIC: torch.full_like(reference[KEY_PUBLIC], 1e30)}), path)
    model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.warns(
        RuntimeWarning, match=rf"huge\.pth: weight '{KEY_EITHER}'.* magnitude 1e\+30"
    ):
        model.init_weights()


def test_fit_hook_refuses_a_negative_batchnorm_variance(tmp_path):
    runner = _fit_runner(tmp_path, 'bad.pth')
    runner.model = torch.nn.Sequential(torch.nn.BatchNorm1d(4))
    state = dict(runner.model.state_dict())
    state['0.running_var'] = torch.tensor([1.0, -1.0, 2.0, 1.0])
    with pytest.raises(
        CheckpointMismatchError, match=r"bad\.pth: BatchNorm variance '0.running_var' .*\(min -1\)"
    ):
        CheckpointFitHook().after_load_checkpoint(runner, {'state_dict': state})


def test_fit_hook_on_auto_resume_names_the_file_and_fits_train(tmp_path):
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_3.pth'))
    runner = _fit_runner(tmp_path, None, resume=True)
    with pytest.raises(CheckpointMismatchError) as error:
        CheckpointFitHook().after_load_checkpoint(runner, {'state_dict': {}})
    assert str(error.value).startswith(str(tmp_path / 'epoch_3.pth'))
    assert '--allow-partial-load' not in str(error.value)
    assert 'without --resume' in str(error.value)


def _not_checkpoints(tmp_path):
    text = tmp_path / 'notes.pth'
    text.write_text('epoch 12: mAP 0.41\n')
    fifo = tmp_path / 'fifo.pth'
    os.mkfifo(fifo)
    as_list = tmp_path / 'list.pth'
    torch.save([torch.zeros(2)], as_list)
    return [
        (text, r"notes\.pth is not a checkpoint: it starts with b'epoc'"),
        ('/dev/zero', '/dev/zero is not a regular file'),
        (fifo, r'fifo\.pth is not a regular file'),
        (tmp_path, 'is a directory; a checkpoint file'),
        (as_list, r'list\.pth holds a list, not a dict'),
    ]


def test_runner_loader_explains_what_is_not_a_checkpoint(tmp_path):
    for path, message in _not_checkpoints(tmp_path):
        with pytest.raises((OSError, ValueError, TypeError), match=message):
            _load_checkpoint(str(path), map_location='cpu')


def test_backbone_loader_explains_what_is_not_a_checkpoint(tmp_path):
    for path, message in _not_checkpoints(tmp_path):
        model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
        with pytest.raises((OSError, RuntimeError), match=message):
            model.init_weights()
