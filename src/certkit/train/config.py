"""A training run's configuration, read from TOML: the [data], [model], [train] and [eval] sections give the fields
of :class:`TrainConfig`; COLT's [colt], randomized smoothing's [smoothing], the [certified] section (CROWN-IBP,
SABR, MTL-IBP) and [self_training] are their own dataclasses (:class:`ColtConfig`, :class:`SmoothingConfig`,
:class:`CertifiedConfig`, :class:`~certkit.train.batches.SelfTrainingConfig`), read by the same reader with the
same unknown-key and type errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from certkit.errors import ConfigError
from certkit.io import read_dataclass
from certkit.smoothing.smooth import CERTIFICATES, Noise
from certkit.train.batches import SelfTrainingConfig
from certkit.train.objectives import OBJECTIVES

SMOOTHING_OBJECTIVES = ("gaussian", "stability", "smoothadv")


@dataclass
class ColtConfig:
    """COLT's schedule and attack (:mod:`certkit.train.colt`): epochs per stage (input stage first), the latent ReLU
    layers (1-based; default: every one after the first), ε factors, κ mixing, lr decay per stage and every
    ``lr_step`` epochs, the ReLU-stability penalty, the latent attack and its Cauchy projections."""

    stage_epochs: list[int] = field(default_factory=list)
    layers: list[int] | None = None
    start_eps_factor: float = 1.05
    eps_factor: float = 1.05
    mix_epochs: int = 1
    lr_stage_factor: float = 0.5
    lr_step: int = 10
    relu_stable: float | None = None
    relu_stable_factor: float = 1.0
    attack_steps: int = 10
    attack_step: float = 0.25
    projections: int = 50
    nat_factor: float = 0.0


@dataclass
class SmoothingConfig:
    """The base classifier's training noise (``noise``: gaussian, laplace or uniform, of scale ``sigma``: σ, or λ),
    stability training's γ, and SmoothAdv's noise draws per input ``m``, attack steps and gradient-free option."""

    noise: str = "gaussian"
    sigma: float = 0.25
    stability_gamma: float = 1.0
    m: int = 1
    steps: int = 1
    no_grad: bool = False

    def as_noise(self) -> Noise:
        return Noise(self.noise, self.sigma)


@dataclass
class CertifiedConfig:
    """The [certified] section: CROWN-IBP's β ramp (with ε's warm-up and ramp; β = 0: pure IBP), SABR's small-box
    fraction λ (``sabr_lambda``), MTL-IBP's weight α of the IBP loss and its ``combination`` (mtl, exp, cc), and
    Shi et al.'s IBP initialisation (``ibp_init``) and warm-up regulariser weight λ (``warmup_reg``, tolerance
    τ = ``warmup_tol``) for IBP, CROWN-IBP and SABR training; ``loss_fusion``: CROWN-IBP bounds the
    cross-entropy in one backward pass (Xu et al. 2020) instead of one per margin."""

    beta_start: float = 1.0
    beta_end: float = 0.0
    sabr_lambda: float = 0.4
    alpha: float = 0.5
    combination: str = "mtl"
    ibp_init: bool = False
    warmup_reg: float = 0.0
    warmup_tol: float = 0.5
    loss_fusion: bool = False


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    name: str = "run"
    data: str = "mnist"
    data_dir: str | None = None
    train_n: int | None = None  # use only the first n training images (quick runs)
    arch: str = "colt-mnist"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: bool = True  # a Normalize layer (the data set's mean and std) in front; false: raw pixels in [0, 1]
    init: str | None = None  # a certkit checkpoint of the same architecture whose weights start the run (fine-tuning)
    objective: str = "ibp"  # one of certkit.train.objectives.OBJECTIVES
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_milestones: list[float] = field(default_factory=list)  # epochs at which lr *= lr_gamma
    lr_gamma: float = 0.1
    eps: float = 0.1  # training radius (final value of the ramp)
    norm: str = "inf"
    warmup_epochs: float = 0.0  # epochs at eps = 0 (and kappa = kappa_start)
    ramp_epochs: float = 0.0  # epochs over which eps and kappa go linearly to their final values
    kappa_start: float = 1.0
    kappa_end: float = 0.5
    pgd_steps: int = 10
    pgd_step_size: float | None = None  # PGD's step in the attack-based objectives (pgd, trades); default 2.5·ε/steps
    trades_beta: float = 6.0  # TRADES' β: weight of the KL between the clean and the attacked prediction
    l1: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    eval_eps: float = 0.1
    eval_n: int = 1000  # test images evaluated (clean and IBP-certified) after every epoch
    device: str = "cpu"
    colt: ColtConfig = field(default_factory=ColtConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    certified: CertifiedConfig = field(default_factory=CertifiedConfig)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)

    _SECTIONS = {
        "data": {"dataset": "data", "dir": "data_dir", "train_n": "train_n"},
        "model": {"arch": "arch", "kwargs": "arch_kwargs", "normalize": "normalize", "init": "init"},
        "eval": {"eps": "eval_eps", "n": "eval_n"},
    }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Read a TOML-style dict with optional [data], [model], [train], [eval], [colt] and [smoothing] sections."""
        cfg, flat = read_dataclass(cls, d, cls._SECTIONS)
        if cfg.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {cfg.objective!r}; use one of {', '.join(OBJECTIVES)}")
        if cfg.smoothing.noise not in CERTIFICATES:
            raise ConfigError(f"unknown smoothing.noise {cfg.smoothing.noise!r}; use one of {', '.join(CERTIFICATES)}")
        if not cfg.smoothing.sigma > 0:
            raise ConfigError(f"smoothing.sigma must be positive, got {cfg.smoothing.sigma}")
        c = cfg.certified
        if c.combination not in ("mtl", "exp", "cc") or not 0 <= c.alpha <= 1 or not 0 < c.sabr_lambda <= 1:
            raise ConfigError(f"[certified]: combination must be mtl, exp or cc (got {c.combination!r}), alpha in "
                              f"[0, 1] (got {c.alpha}) and sabr_lambda in (0, 1] (got {c.sabr_lambda})")
        cfg.self_training.check()
        if cfg.objective == "colt":
            if not cfg.colt.stage_epochs:
                raise ValueError("objective 'colt' needs [colt] stage_epochs (epochs per stage, input stage first)")
            total = sum(cfg.colt.stage_epochs)
            if "epochs" in flat and flat["epochs"] != total:
                raise ValueError(f"epochs = {flat['epochs']} differs from the sum of colt stage_epochs ({total})")
            cfg.epochs = total
        if cfg.eps < 0 or cfg.eval_eps < 0:
            raise ValueError("eps must be non-negative")
        if cfg.epochs <= 0 or cfg.batch_size <= 0:
            raise ValueError("epochs and batch_size must be positive")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# the flat names that runs saved before [colt] and [smoothing] became their own dataclasses wrote
_LEGACY = {**{f"colt_{f.name}": ("colt", f.name) for f in dataclasses.fields(ColtConfig)},
           "sigma": ("smoothing", "sigma"), "stability_gamma": ("smoothing", "stability_gamma"),
           "smoothadv_m": ("smoothing", "m"), "smoothadv_steps": ("smoothing", "steps"),
           "smoothadv_no_grad": ("smoothing", "no_grad")}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config (a checkpoint's metadata or train state) in today's form: the flat ``colt_*``, ``sigma``,
    ``stability_gamma`` and ``smoothadv_*`` entries of older runs move into ``colt`` and ``smoothing`` (their noise
    was Gaussian), and a section added since (``certified``) gets its defaults, so that older runs resume and
    their checkpoints say their training noise."""
    out = {k: v for k, v in config.items() if k not in _LEGACY}
    for name, cls in (("colt", ColtConfig), ("smoothing", SmoothingConfig), ("certified", CertifiedConfig),
                      ("self_training", SelfTrainingConfig)):
        if name not in out or isinstance(out[name], dict):
            out[name] = {**dataclasses.asdict(cls()), **(out.get(name) or {})}
    for key, (section, name) in _LEGACY.items():
        if key in config:
            out[section][name] = config[key]
    return out


def trained_noise(config: dict[str, Any]) -> Noise | None:
    """The noise a checkpoint's base classifier was trained with (from its saved config), or None when its
    objective adds none."""
    config = upgrade_config(config or {})
    if config.get("objective") not in SMOOTHING_OBJECTIVES:
        return None
    s = {**dataclasses.asdict(SmoothingConfig()), **(config.get("smoothing") or {})}
    return Noise(s["noise"], float(s["sigma"]))
