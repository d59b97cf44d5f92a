"""DDP with channels-last DS-Blocks: gradients keep their parameters' strides.

DSNet and DSFPN run their DS-Blocks on channels-last maps; convolution
backward then returns the 1x1 and depthwise weight gradients with strides
that differ from the parameters' along the size-1 dimensions, and DDP's
reducer warned "Grad strides do not match bucket view strides" for them.
``match_grad_strides`` (mmdsnet/models/layers/ds_block.py) hands them on as
views with the parameter's strides. Which kernels return such strides depends
on the kernel: with one thread, oneDNN runs the 1x1 convs only for 16 or more
images, so the checks use 2 and 16 images (one thread: the machine is shared).

Run as a script, this file is one rank of the 2-process gloo check.
"""

import copy
import json
import os
import os.path as osp
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import REPO_ROOT, TESTS_ROOT, free_port

from mmdsnet.models.backbones.dsnet import DSNet
from mmdsnet.models.necks.ds_fpn import DSFPN

WARNING = 'Grad strides do not match bucket view strides'


def build(with_neck: bool) -> torch.nn.Sequential:
    """DSNet-T (+ DSFPN) in training mode with every norm batch-independent:
    the backbone's BN in eval mode (``norm_eval``), DSFPN's GroupNorm, so
    that per-process batches give the same gradients as one whole batch."""
    torch.manual_seed(0)
    modules = [DSNet('tiny', drop_path_rate=0.0, norm_eval=True)]
    if with_neck:
        modules.append(DSFPN([64, 128, 320, 512], 64, 5, ds_num_heads=1))
    return torch.nn.Sequential(*modules).train()


def inputs_and_weights(batch: int, size: int):
    """``batch`` images of ``size`` x ``size`` and fixed random loss weights
    per output: DSNet's at strides 4-32, DSFPN's at strides 4-64."""
    torch.manual_seed(1)
    images = torch.randn(batch, 3, size, size)
    backbone = [(c, -(-size // s)) for c, s in zip((64, 128, 320, 512), (4, 8, 16, 32))]
    neck = [(64, -(-size // s)) for s in (4, 8, 16, 32, 64)]
    weights = dict(
        dsnet=[torch.randn(1, c, side, side) for c, side in backbone],
        dsfpn=[torch.randn(1, c, side, side) for c, side in neck],
    )
    return images, weights


def loss_of(model, images, weights):
    """A per-image mean, so that the mean over ranks is the whole batch's loss."""
    return sum((out * w).mean() for out, w in zip(model(images), weights))


def mismatched(model) -> list:
    """Parameters whose gradient strides differ from theirs (what DDP compares)."""
    return [n for n, p in model.named_parameters() if p.grad.stride() != p.stride()]


@pytest.mark.parametrize('batch,size', [(2, 64), (16, 32)])
def test_gradients_have_the_parameters_strides(batch, size):
    """Every gradient of DSNet + DSFPN has its parameter's strides, the values
    equal those without the hooks, and the parameters keep their default
    (contiguous) strides, so checkpoints are unchanged; a deep copy (which
    drops tensor hooks) gets them back from ``train()``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, weights = inputs_and_weights(batch, size)
        model, plain = build(True), build(True)
        for param in plain.parameters():
            if param._backward_hooks:
                param._backward_hooks.clear()
        copied = copy.deepcopy(model).train()
        for net in (model, plain, copied):
            loss_of(net, images, weights['dsfpn']).backward()
        assert mismatched(model) == [] and mismatched(copied) == []
        # Without the hooks: the depthwise weights of every DS-Block mismatch,
        # and the 1x1 ones too where oneDNN runs them (16 images), conv1's and
        # conv2's per-stream halves included.
        expected = {'pos_embed', 'conv'}
        if batch >= 16:
            expected |= {'cross_channel_up_conv', 'fc1', 'fc2', 'conv1', 'conv2'}
        assert {n.split('.')[-2] for n in mismatched(plain)} == expected
        for (name, param), ref in zip(model.named_parameters(), plain.parameters()):
            assert param.stride() == torch.empty(param.shape).stride(), name
            torch.testing.assert_close(param.grad, ref.grad, rtol=0, atol=0, msg=name)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason='needs gloo')
@pytest.mark.integration
def test_two_process_ddp_no_stride_warning_and_same_gradients(tmp_path):
    """Two gloo processes, one DDP step each of DSNet-T and DSNet-T + DSFPN:
    no stride warning, every gradient with its parameter's strides, and the
    averaged gradients equal one process's on the concatenated batch."""
    env = dict(
        os.environ,
        WORLD_SIZE='2',
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(free_port()),
        PYTHONPATH=os.pathsep.join(
            filter(None, [REPO_ROOT, TESTS_ROOT, os.environ.get('PYTHONPATH')])
        ),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(tmp_path)],
            env=dict(env, RANK=str(rank)),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], '\n'.join(outputs)[-6000:]
    for rank, output in enumerate(outputs):
        assert WARNING not in output
        result = json.loads((tmp_path / f'rank{rank}.json').read_text())
        assert result['mmdsnet'].startswith(osp.join(REPO_ROOT, 'mmdsnet'))
        for which in ('dsnet', 'dsfpn'):
            assert result[which]['warnings'] == [], result[which]['warnings']
            assert result[which]['mismatched'] == []
    errors = json.loads((tmp_path / 'rank0.json').read_text())
    # every parameter compared (DSNet-T 341, with DS-FPN 505: conv1/conv2 kept per stream)
    assert errors['dsnet']['params'] == len(list(build(False).parameters())) == 341
    assert errors['dsfpn']['params'] == len(list(build(True).parameters())) == 505
    for which in ('dsnet', 'dsfpn'):
        assert errors[which]['max_rel_error'] < 1e-4, errors[which]


def _rank_main(out_dir: str) -> None:
    """One rank: a DDP step per model; rank 0 also runs the 1-process reference."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import mmdsnet

    torch.set_num_threads(1)
    torch.set_warn_always(True)  # the reducer warns once per process otherwise
    rank, world = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    # 16 images per rank: oneDNN runs the 1x1 convs (see the module docstring).
    images, weights = inputs_and_weights(16 * world, 32)
    mine = images[16 * rank : 16 * rank + 16]
    dist.init_process_group('gloo')
    result = dict(mmdsnet=mmdsnet.__file__)
    for which in ('dsnet', 'dsfpn'):
        loss_weights = weights[which]
        ddp = DistributedDataParallel(build(which == 'dsfpn'))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            loss_of(ddp, mine, loss_weights).backward()
        entry = dict(
            warnings=[str(w.message) for w in caught if WARNING in str(w.message)],
            mismatched=mismatched(ddp.module),
        )
        if rank == 0:
            reference = build(which == 'dsfpn')
            loss_of(reference, images, loss_weights).backward()
            errors = [
                ((p.grad - r.grad).abs().max() / r.grad.abs().max().clamp_min(1e-12)).item()
                for p, r in zip(ddp.module.parameters(), reference.parameters())
            ]
            entry.update(max_rel_error=max(errors), params=len(errors))
        result[which] = entry
    with open(osp.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == '__main__':
    _rank_main(sys.argv[1])
