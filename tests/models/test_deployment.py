"""The backbone under reduced precision, torch.compile and ONNX export."""

import pytest
import torch

from mmdsnet.models import DSFPN, DSNet


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return DSNet('tiny').eval()


def relative_error(actual, expected):
    return ((actual.float() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_cpu_autocast_close_to_fp32(tiny, dtype):
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        expected = tiny(x)
        with torch.autocast('cpu', dtype=dtype):
            actual = tiny(x)
    for a, e in zip(actual, expected):
        assert torch.isfinite(a).all()
        assert relative_error(a, e) < 0.05


def test_autocast_training_step_is_finite():
    model = DSNet('tiny', drop_path_rate=0.1)
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = sum(o.float().square().mean() for o in model(torch.randn(2, 3, 96, 96)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_torch_compile_matches_eager(tiny):
    x = torch.randn(1, 3, 96, 128)
    compiled = torch.compile(tiny, dynamic=False)
    with torch.no_grad():
        for a, e in zip(compiled(x), tiny(x)):
            torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-3)


def test_onnx_export_backbone_and_neck(tmp_path, tiny):
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')

    class BackboneWithNeck(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = tiny
            self.neck = DSFPN([64, 128, 320, 512], 64, num_outs=5, ds_num_heads=1).eval()

        def forward(self, x):
            return self.neck(self.backbone(x))

    model = BackboneWithNeck().eval()
    x = torch.randn(1, 3, 128, 160)
    path = tmp_path / 'dsnet_t_dsfpn.onnx'
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=['image'])
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    assert len(outputs) == 5
    for out, exp in zip(outputs, expected):
        torch.testing.assert_close(torch.from_numpy(out), exp, rtol=1e-3, atol=1e-3)
