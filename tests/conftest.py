import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, int(os.environ.get("CERTKIT_TEST_THREADS", "2"))))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def data_dir() -> Path | None:
    """The real-data folder: $CERTKIT_DATA (CI points it at ../shared/data)."""
    d = os.environ.get("CERTKIT_DATA")
    return Path(d) if d else None


@pytest.fixture
def mnist_dir():
    d = data_dir()
    if d is None or not (d / "mnist").is_dir():
        pytest.skip("real MNIST not available: set CERTKIT_DATA to a folder holding mnist/ (CI uses ../shared/data)")
    return d


@pytest.fixture
def shared():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the shared reference files) is not present")
    return SHARED


def assert_contained(lower, upper, values, tol=1e-5):
    """Every sampled value lies inside [lower, upper] (up to float tolerance)."""
    scale = 1 + values.abs()
    assert (values >= lower - tol * scale).all(), f"below lower bound by {(lower - values).max().item()}"
    assert (values <= upper + tol * scale).all(), f"above upper bound by {(values - upper).max().item()}"


def golden_model(shared: Path):
    """auto_LiRPA's golden-test model and data: relu(conv1(bn(x))) + shortcut(x) -> relu(conv2) -> fc1."""
    from torch import nn

    data = torch.load(shared / "reference/auto_LiRPA/vision_test_data", weights_only=True)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn = nn.Conv2d(3, 3, 4, 2, 1), nn.BatchNorm2d(3)
            self.shortcut, self.conv2 = nn.Conv2d(3, 3, 4, 2, 1), nn.Conv2d(3, 3, 4, 2, 1)
            self.fc1 = nn.Linear(192, 10)

        def forward(self, x):
            y = torch.relu(self.conv1(self.bn(x))) + self.shortcut(x)
            z = torch.relu(self.conv2(y))
            return self.fc1(z.view(z.size(0), -1))

    model = Model()
    model.load_state_dict(data["model"])
    return model.eval(), data
