import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certkit import Normalize, Residual, to_graph
from certkit.graph import UnsupportedOpError
from certkit.nn import Affine, Reindex


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x):
        h = F.relu(self.conv(x)) + torch.sigmoid(self.conv(x))
        return self.fc(torch.tanh(h).view(h.size(0), -1))


def every_op_model():
    return nn.Sequential(
        Normalize([0.5, 0.4], [0.2, 0.3]),
        Affine(torch.linspace(-1.5, 1.5, 512).view(1, 2, 16, 16), torch.linspace(-0.2, 0.3, 16).view(1, 1, 1, 16)),
        Reindex.of(lambda t: t.transpose(2, 3), (2, 16, 16)),
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh()), nn.Conv2d(4, 4, 1)),
        nn.AvgPool2d(2), nn.ConvTranspose2d(4, 3, 2, stride=2), nn.Sigmoid(), nn.MaxPool2d(2),
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 48), nn.Unflatten(1, (3, 4, 4)),
                      nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 8)),
        nn.LeakyReLU(0.2), nn.Identity(), nn.Linear(8, 5),
    )


def test_every_supported_op_converts_and_matches_forward():
    torch.manual_seed(0)
    m = every_op_model().eval()
    m[4].running_mean.uniform_(-0.5, 0.5)
    m[4].running_var.uniform_(0.5, 2)
    g = to_graph(m)
    names = {type(n.op).__name__ for n in g.nodes}
    assert names >= {"Input", "ElementwiseAffine", "Conv2d", "ReLU", "Tanh", "Add", "AvgPool2d", "ConvTranspose2d",
                     "Sigmoid", "MaxPool2d", "Flatten", "Unflatten", "Linear", "Reindex", "LeakyReLU"}
    x = torch.rand(3, 2, 16, 16)
    assert torch.allclose(g.forward(x), m(x), atol=1e-6)


def test_functional_forms_and_dag():
    m = Functional()
    g = to_graph(m)
    x = torch.rand(2, 1, 6, 6)
    assert torch.allclose(g.forward(x), m(x), atol=1e-6)
    assert any(len(u) > 1 for u in g.users)  # the conv output feeds two branches


def test_unsupported_module_is_named():
    m = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedOpError, match=r"'1' \(GELU\)"):
        to_graph(m)


def test_unsupported_function_and_constants():
    class Mul(nn.Module):
        def forward(self, x):
            return x * 2

    with pytest.raises(UnsupportedOpError, match="mul"):
        to_graph(Mul())

    class Cat(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], 1)

    with pytest.raises(UnsupportedOpError, match="cat"):
        to_graph(Cat())


def test_batchnorm_in_training_mode_is_an_error():
    from certkit import LinfBall, interval_bounds

    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedOpError, match="eval"):
        interval_bounds(m, LinfBall(torch.rand(2, 3), 0.1))
