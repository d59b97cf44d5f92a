"""DSNet(compile_blocks=...): torch.compile of every DS-Block (regional,
dynamic shapes) gives eager's outputs and gradients without recompiling for
new image sizes.

The CPU test compiles with ``backend='aot_eager'`` (dynamo's graph capture
and AOT autograd, as inductor receives them, in seconds instead of the
minutes inductor's C++ build takes on two cores); the GPU tests use the
default backend.
"""

import pytest
import torch
from torch._dynamo.utils import counters

from mmdsnet.models import DSNet

# two stages of different widths: one compiled graph each
SMALL_ARCH = dict(embed_dims=[32, 64, 64, 64], depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 2])


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def assert_close_to_largest(got, want, tolerance, name):
    error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
    assert error <= tolerance, f'{name}: {error:.3g} of the largest entry'


def train_once(model, x):
    model.zero_grad(set_to_none=True)
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.integration
def test_compiled_blocks_equal_eager_at_three_sizes_with_one_graph_per_width(fresh_dynamo):
    torch.manual_seed(0)
    options = dict(arch=SMALL_ARCH, out_indices=(0, 1), drop_path_rate=0.0)
    eager = DSNet(**options)
    compiled = DSNet(**options, compile_blocks=dict(backend='aot_eager'))
    compiled.load_state_dict(eager.state_dict())
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for size in ((64, 96), (96, 64), (128, 160)):
        x = torch.randn(2, 3, *size)
        want_outs, want_grads = train_once(eager, x)
        got_outs, got_grads = train_once(compiled, x)
        for i, (got, want) in enumerate(zip(got_outs, want_outs)):
            assert_close_to_largest(got, want, 1e-5, f'output {i} at {size}')
        for name, grad in want_grads.items():
            assert_close_to_largest(got_grads[name], grad, 1e-4, f'grad of {name} at {size}')
    # one graph per block width (2 stages), none for the new sizes
    assert counters['stats']['unique_graphs'] == 2, dict(counters['stats'])
    assert not counters['graph_break'], dict(counters['graph_break'])


def test_compile_blocks_takes_a_switch_or_compile_arguments():
    model = DSNet(arch=SMALL_ARCH, out_indices=(0,), compile_blocks=True)
    assert all(block._compiled_call_impl is not None for block in model.stages[0])
    assert DSNet(arch=SMALL_ARCH, out_indices=(0,)).stages[0][0]._compiled_call_impl is None
    with pytest.raises(TypeError, match='compile_blocks must be True, False or a dict'):
        DSNet(arch=SMALL_ARCH, out_indices=(0,), compile_blocks='yes')
