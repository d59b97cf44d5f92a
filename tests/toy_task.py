"""A toy regression task for the Runner and tool tests (tests/test_compat.py).

Registered in mmengine's root registries, so a config can name it: the tool
subprocesses import it through ``custom_imports=['toy_task']`` with tests/ on
PYTHONPATH; in-process tests use the classes directly.
"""

import torch
import torch.distributed as dist
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, METRICS, MODELS
from torch import nn
from torch.utils.data import Dataset


@MODELS.register_module()
class ToyRegressor(BaseModel):
    """Linear regression with fixed initial weights and no BN, so runs with
    the same global batch give the same weights on any number of processes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.linspace(-0.5, 0.5, 8).view(2, 4))
            self.fc.bias.copy_(torch.tensor([0.1, -0.1]))

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.fc(inputs)
        if mode == 'loss':
            loss = ((out - targets) ** 2).mean()
            # The mean over all processes, logged only (no 'loss' in its name).
            global_mse = loss.detach().clone()
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(global_mse)
                global_mse /= dist.get_world_size()
            return dict(loss_mse=loss, global_mse=global_mse)
        if mode == 'predict':
            return [dict(pred=o, target=t) for o, t in zip(out, targets)]
        return out


@DATASETS.register_module()
class ToyRegressionDataset(Dataset):
    """``n`` fixed random samples (the same on every call)."""

    metainfo = dict(classes=('toy',))

    def __init__(self, n=16):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=gen)
        self.y = torch.randn(n, 2, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return dict(inputs=self.x[idx], targets=self.y[idx])


@METRICS.register_module()
class ToyMSE(BaseMetric):
    """Mean squared error of the predictions."""

    def process(self, data_batch, data_samples):
        for sample in data_samples:
            err = (sample['pred'] - sample['target']) ** 2
            self.results.append(err.mean().item())

    def compute_metrics(self, results):
        return dict(mse=sum(results) / len(results))
