import pytest
import torch

from certkit import LinfBall, interval_bounds, to_graph
from certkit.data import load_dataset
from certkit.models import REGISTRY, build, load_colt_mnist
from certkit.verify import certify

SHAPES = {"mlp": (1, 28, 28), "colt-mnist": (1, 28, 28), "stn-mnist": (1, 28, 28), "madry-mnist": (1, 28, 28),
          "trades-mnist": (1, 28, 28), "lenet": (1, 28, 28),
          "small-conv": (1, 8, 8), "provae-encoder": (1, 28, 28), "provae-decoder": (50,)}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_zoo_models_build_and_bound(name):
    shape = SHAPES.get(name, (3, 32, 32))
    torch.manual_seed(0)
    norm = ([0.5] * shape[0], [0.25] * shape[0]) if len(shape) == 3 else (None, None)
    m = build(name, shape, 10, *norm).eval()
    x = torch.rand(2, *shape)
    if name == "provae-decoder":
        assert m(x).shape == (2, 1, 28, 28)
    g = to_graph(m)
    assert torch.allclose(g.forward(x), m(x), atol=1e-5)
    b = interval_bounds(m, LinfBall(x, 0.001))
    out = m(x)
    # IBP through 110 randomly initialised layers overflows; bounds that are finite must contain the output
    assert ((b.lower <= out + 1e-5) | b.lower.isnan()).all() and ((b.upper >= out - 1e-5) | b.upper.isnan()).all()
    if name != "resnet110":
        assert torch.isfinite(b.lower).all()
    if out.dim() == 2:
        c = certify(m, x, out.argmax(1), 0.001, domain=None)
        assert c.correct.all() and not c.margin_lower.isnan().any()


def test_architecture_sizes():
    m = build("colt-mnist", (1, 28, 28), 10, [0.1307], [0.3081])
    assert [tuple(p.shape) for p in m.parameters()][::2] == [(32, 1, 5, 5), (64, 32, 4, 4), (100, 3136), (10, 100)]
    assert sum(p.numel() for p in build("mlp", (1, 28, 28)).parameters()) == 784 * 512 + 512 + 5130
    with pytest.raises(KeyError, match="unknown architecture"):
        build("vgg", (3, 32, 32))


def test_colt_released_network(shared, mnist_dir):
    """COLT's released MNIST eps=0.1 net loads into our ConvMed with a Normalize layer (99.2 % clean published)."""
    m = load_colt_mnist(shared / "models/colt/mnist_0.1_convmed_flat_2_2_100.pt")
    data = load_dataset("mnist", "test", mnist_dir).subset(0, 1000)
    c = certify(m.eval(), data.x, data.y, 0.1)
    assert c.correct.float().mean() > 0.98
    assert c.certified.float().mean() < c.correct.float().mean()  # not IBP-trained: IBP is loose on it
