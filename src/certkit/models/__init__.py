"""The papers' architectures by name: ``build(name, in_shape, num_classes, mean, std, **kw)``.

Every model starts with a :class:`~certkit.nn.Normalize` layer (the data set's statistics), so inputs and
radii are in pixel space. Checkpoints record the name and arguments, so a model is rebuilt without pickles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from certkit.nn import Normalize, Residual

REGISTRY: dict[str, Callable[..., nn.Sequential]] = {}


def register(name: str):
    def deco(fn):
        REGISTRY[name] = fn
        return fn

    return deco


def _flat_dim(features: nn.Module, in_shape: Sequence[int]) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *in_shape)).flatten(1).shape[1]


def _conv_net(in_shape, num_classes, convs, fcs, pool: bool = False, pool_each: bool = False) -> list[nn.Module]:
    """conv (channels, kernel, stride, padding) layers with ReLU (``pool_each``: each followed by a 2×2 max-pool;
    ``pool``: one after the last), then fc layers with ReLU, then the classifier."""
    layers: list[nn.Module] = []
    c = in_shape[0]
    for out, k, s, p in convs:
        layers += [nn.Conv2d(c, out, k, s, p), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool_each else [])
        c = out
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers.append(nn.Flatten())
    n = _flat_dim(nn.Sequential(*layers), in_shape)
    for width in fcs:
        layers += [nn.Linear(n, width), nn.ReLU()]
        n = width
    layers.append(nn.Linear(n, num_classes))
    return layers


@register("mlp")
def mlp(in_shape, num_classes, hidden: Sequence[int] = (512,)):
    """Fully connected ReLU net; the default 784-512-10 is the BNN paper's MNIST MLP."""
    layers: list[nn.Module] = [nn.Flatten()]
    n = math.prod(in_shape)
    for h in hidden:
        layers += [nn.Linear(n, h), nn.ReLU()]
        n = h
    layers.append(nn.Linear(n, num_classes))
    return layers


@register("colt-mnist")
def colt_mnist(in_shape, num_classes):
    """COLT's MNIST ConvMed: conv 32 k5 s2, conv 64 k4 s2, fc 100, fc 10 (loads the released ε=0.1 weights)."""
    return _conv_net(in_shape, num_classes, [(32, 5, 2, 2), (64, 4, 2, 1)], [100])


@register("colt-cifar-small")
def colt_cifar_small(in_shape, num_classes):
    """COLT's CIFAR-10 2/255 net: conv 32 k3 s1, conv 32 k4 s2, conv 128 k4 s2, fc 250."""
    return _conv_net(in_shape, num_classes, [(32, 3, 1, 1), (32, 4, 2, 1), (128, 4, 2, 1)], [250])


@register("colt-cifar-large")
def colt_cifar_large(in_shape, num_classes):
    """COLT's CIFAR-10 8/255 net: conv 32 k5 s2, conv 128 k4 s2, fc 250."""
    return _conv_net(in_shape, num_classes, [(32, 5, 2, 2), (128, 4, 2, 1)], [250])


@register("bnn-cnn")
def bnn_cnn(in_shape, num_classes):
    """The BNN paper's CNN: 2× conv 32 k4, max-pool 2, fc 512, fc 10."""
    return _conv_net(in_shape, num_classes, [(32, 4, 1, 0), (32, 4, 1, 0)], [512], pool=True)


@register("stn-mnist")
def stn_mnist(in_shape, num_classes):
    """STN's MNIST net (Li et al. 2019): 2× conv 64 k3 with max-pool, fc 128."""
    return _conv_net(in_shape, num_classes, [(64, 3, 1, 1), (64, 3, 1, 1)], [128], pool_each=True)


@register("madry-mnist")
def madry_mnist(in_shape, num_classes):
    """Madry et al.'s MNIST net (2018): conv 32 k5 and conv 64 k5 (same padding), each with max-pool 2, fc 1024."""
    return _conv_net(in_shape, num_classes, [(32, 5, 1, 2), (64, 5, 1, 2)], [1024], pool_each=True)


@register("trades-mnist")
def trades_mnist(in_shape, num_classes):
    """TRADES' MNIST SmallCNN (Zhang et al. 2019): conv 32, 32 (k3), max-pool, conv 64, 64 (k3), max-pool, fc 200,
    fc 200 (their dropout before the last fc layers is left out)."""
    c = in_shape[0]
    layers = [nn.Conv2d(c, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
              nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()]
    n = _flat_dim(nn.Sequential(*layers), in_shape)
    return layers + [nn.Linear(n, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, num_classes)]


@register("lenet")
def lenet(in_shape, num_classes):
    """LeNet (Caffe variant, used for MNIST in the smoothing literature): conv 20 k5, pool, conv 50 k5, pool, fc 500."""
    c = in_shape[0]
    layers = [nn.Conv2d(c, 20, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
              nn.Flatten()]
    n = _flat_dim(nn.Sequential(*layers), in_shape)
    return layers + [nn.Linear(n, 500), nn.ReLU(), nn.Linear(500, num_classes)]


def _basic_block(c_in: int, c_out: int, stride: int) -> nn.Module:
    body = nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
    )
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
    return nn.Sequential(Residual(body, shortcut), nn.ReLU())


def _cifar_resnet(in_shape, num_classes, depth: int):
    """He et al.'s CIFAR ResNet-(6n+2) with basic blocks (Cohen et al. use ResNet-110 for smoothing)."""
    if (depth - 2) % 6:
        raise ValueError("CIFAR ResNet depth must be 6n+2")
    n = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    c = 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(n):
            layers.append(_basic_block(c, width, 2 if (stage > 0 and i == 0) else 1))
            c = width
    size = in_shape[1] // 4
    return layers + [nn.AvgPool2d(size), nn.Flatten(), nn.Linear(c, num_classes)]


@register("resnet20")
def resnet20(in_shape, num_classes):
    return _cifar_resnet(in_shape, num_classes, 20)


@register("resnet110")
def resnet110(in_shape, num_classes):
    return _cifar_resnet(in_shape, num_classes, 110)


@register("small-conv")
def small_conv(in_shape, num_classes):
    """A small conv net for the 8×8 digits demo: conv 16 k3 s1, conv 32 k3 s2, fc 64."""
    return _conv_net(in_shape, num_classes, [(16, 3, 1, 1), (32, 3, 2, 1)], [64])


@register("provae-encoder")
def provae_encoder(in_shape, num_classes, latent: int = 50, hidden: int = 256):
    """proVAE encoder: conv 32 k4 s2, conv 64 k4 s2, fc ``hidden``, then one linear layer giving [μ, log σ]
    (the two heads share all but their last layer). ``num_classes`` is unused."""
    layers = [nn.Conv2d(in_shape[0], 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(), nn.Flatten()]
    n = _flat_dim(nn.Sequential(*layers), in_shape)
    return layers + [nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent)]


@register("provae-decoder")
def provae_decoder(in_shape, num_classes, out_shape: Sequence[int] = (1, 28, 28)):
    """proVAE decoder: fc to 64×(H/4)×(W/4), transposed convs 64→32→C (k4 s2), sigmoid. ``in_shape`` = (latent,)."""
    c, h, w = out_shape
    if h % 4 or w % 4 or min(h, w) < 4:
        raise ValueError(f"provae-decoder upsamples 4×: out_shape (C, H, W) needs H and W multiples of 4, got "
                         f"{tuple(out_shape)}")
    return [nn.Linear(in_shape[0], 64 * (h // 4) * (w // 4)), nn.ReLU(), nn.Unflatten(1, (64, h // 4, w // 4)),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, c, 4, 2, 1), nn.Sigmoid()]


def build(
    name: str,
    in_shape: Sequence[int],
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs,
) -> nn.Sequential:
    """Build architecture ``name`` for inputs of shape ``in_shape`` (C, H, W); with ``mean`` and ``std`` the
    first layer is Normalize(mean, std), so that the model takes pixels in [0, 1]."""
    if name not in REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; available: {', '.join(sorted(REGISTRY))}")
    layers = REGISTRY[name](tuple(in_shape), num_classes, **kwargs)
    if mean is not None or std is not None:
        c = in_shape[0]
        layers = [Normalize(mean if mean is not None else [0.0] * c, std if std is not None else [1.0] * c), *layers]
    return nn.Sequential(*layers)


def load_colt_mnist(path) -> nn.Sequential:
    """COLT's released MNIST network (``mnist_0.1_convmed_flat_2_2_100.pt``, Balunović & Vechev 2020) as a
    ``colt-mnist`` model taking pixels in [0, 1]: its training normalised by (x − 0.1307)/0.3081 outside the net,
    so a Normalize layer is put in front. The released slopes (``deepz_lambda``) are not weights and are dropped."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build("colt-mnist", (1, 28, 28), 10, [0.1307], [0.3081])
    ours = [k for k in model.state_dict() if not k.startswith("0.")]
    theirs = [k for k in state if "deepz_lambda" not in k]
    if len(ours) != len(theirs):
        raise ValueError(f"{path}: expected {len(ours)} weight tensors of COLT's ConvMed, found {len(theirs)}")
    model.load_state_dict({**{k: model.state_dict()[k] for k in ("0.mean", "0.std")},
                           **{a: state[b] for a, b in zip(ours, theirs)}})
    return model.eval()


__all__ = ["REGISTRY", "build", "load_colt_mnist", "register"]
