from pathlib import Path

import pytest
import torch

from certkit.data import load_dataset
from certkit.io import load_model
from certkit.train import Ramp, TrainConfig, evaluate, train


def tiny_cfg(**kw):
    base = dict(name="t", data="digits", arch="small-conv", objective="ibp", epochs=3, batch_size=128, lr=2e-3,
                eps=0.05, warmup_epochs=1, ramp_epochs=1, eval_eps=0.05, eval_n=100, train_n=512)
    return TrainConfig(**{**base, **kw})


def test_ramp_reaches_its_end_exactly():
    r = Ramp(0.0, 0.3, begin=10, length=20)
    assert r(0) == 0 and r(10) == 0 and abs(r(20) - 0.15) < 1e-12 and r(30) == 0.3 and r(1000) == 0.3


@pytest.mark.parametrize("objective", ["standard", "pgd", "ibp", "crown-ibp", "sabr", "mtl-ibp"])
def test_objectives_train_and_checkpoint(tmp_path, objective):
    cfg = tiny_cfg(objective=objective, epochs=2, pgd_steps=3, l1=1e-5)
    model, history = train(cfg, tmp_path, progress=False, log=False)
    assert [h["epoch"] for h in history] == [1, 2]
    m2, meta = load_model(tmp_path / "model.safetensors")
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(model(x), m2(x))
    assert meta["config"]["objective"] == objective and meta["epoch"] == 2


def test_a_model_without_normalisation_takes_raw_pixels_and_reloads(tmp_path):
    from certkit.nn import Normalize

    cfg = TrainConfig.from_dict({"name": "raw", "data": {"dataset": "digits", "train_n": 256},
                                 "model": {"arch": "small-conv", "normalize": False},
                                 "train": {"objective": "standard", "epochs": 1}, "eval": {"n": 50}})
    model, _ = train(cfg, tmp_path, progress=False, log=False)
    assert not any(isinstance(m, Normalize) for m in model.modules())
    m2, meta = load_model(tmp_path / "model.safetensors")
    assert meta["arch"]["mean"] is None and not any(isinstance(m, Normalize) for m in m2.modules())
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(model(x), m2(x))


def test_init_starts_from_a_checkpoint_of_the_same_architecture_only(tmp_path):
    from certkit.io import CheckpointError

    first, _ = train(tiny_cfg(objective="standard", epochs=1), tmp_path / "a", progress=False, log=False)
    ft = tiny_cfg(objective="standard", epochs=1, lr=0.0, optimizer="sgd", init=str(tmp_path / "a/model.safetensors"))
    tuned, _ = train(ft, tmp_path / "b", progress=False, log=False)  # lr 0: the run keeps the initial weights
    fresh, _ = train(tiny_cfg(objective="standard", epochs=1, lr=0.0, optimizer="sgd"), tmp_path / "c",
                     progress=False, log=False)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(tuned(x), first(x)) and not torch.allclose(fresh(x), first(x))
    with pytest.raises(CheckpointError, match="another architecture: mean"):
        train(tiny_cfg(objective="standard", epochs=1, normalize=False, init=ft.init), tmp_path / "d",
              progress=False, log=False)
    with pytest.raises(CheckpointError, match="not found"):
        train(tiny_cfg(objective="standard", epochs=1, init=str(tmp_path / "missing.safetensors")), tmp_path / "e",
              progress=False, log=False)


def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    import certkit.train.loop as loop

    cfg = tiny_cfg(objective="pgd", pgd_steps=2)  # PGD uses random starts: the RNG state must be restored too
    full, _ = train(cfg, tmp_path / "a", progress=False, log=False)

    calls = {"n": 0}
    real_evaluate = loop.evaluate

    def killed_in_epoch_3(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the run dies after training epoch 3, before its checkpoint
        return real_evaluate(*a, **k)

    monkeypatch.setattr(loop, "evaluate", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", progress=False, log=False)
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    resumed, hist = train(cfg, tmp_path / "b", progress=False, log=False)
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert [h["epoch"] for h in hist] == [1, 2, 3]  # no lost or duplicated rows


def test_a_run_in_time_boxed_parts_equals_one_run(tmp_path):
    cfg = tiny_cfg(objective="pgd", pgd_steps=2)
    full, _ = train(cfg, tmp_path / "a", progress=False, log=False)
    _, part = train(cfg, tmp_path / "b", progress=False, log=False, until=2)
    assert [h["epoch"] for h in part] == [1, 2]
    resumed, hist = train(cfg, tmp_path / "b", progress=False, log=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_a_run_saved_on_a_gpu_machine_resumes_here(tmp_path):
    """A state written with CUDA RNG states (a GPU machine) resumes on a machine with another device set."""
    from certkit.train.checkpoint import STATE

    cfg = tiny_cfg(objective="pgd", pgd_steps=2)
    full, _ = train(cfg, tmp_path / "a", progress=False, log=False)
    train(cfg, tmp_path / "b", progress=False, log=False, until=2)
    state = torch.load(tmp_path / "b" / STATE, weights_only=True)
    assert isinstance(state["cuda_rng"], list)
    state["cuda_rng"] = [torch.get_rng_state()] * (torch.cuda.device_count() + 1)  # not this machine's GPUs
    torch.save(state, tmp_path / "b" / STATE)
    resumed, hist = train(cfg, tmp_path / "b", progress=False, log=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_a_different_config_in_the_same_directory_is_refused(tmp_path):
    train(tiny_cfg(epochs=1), tmp_path, progress=False, log=False)
    with pytest.raises(ValueError, match=r"different config \(lr differ\)"):
        train(tiny_cfg(epochs=1, lr=1e-4), tmp_path, progress=False, log=False)
    _, hist = train(tiny_cfg(epochs=2), tmp_path, progress=False, log=False)  # a finished run may go on longer
    assert [h["epoch"] for h in hist] == [1, 2]


def test_a_second_run_in_a_busy_directory_is_refused_and_loses_nothing(tmp_path):
    from certkit.io import InUseError, hold_lock

    train(tiny_cfg(epochs=1), tmp_path, progress=False, log=False)
    before = (tmp_path / "history.jsonl").read_text()
    busy = hold_lock(tmp_path / "run.lock")  # as another process training in this directory would
    with pytest.raises(InUseError, match="in use"):
        train(tiny_cfg(epochs=2), tmp_path, progress=False, log=False)
    assert (tmp_path / "history.jsonl").read_text() == before
    busy.close()
    _, hist = train(tiny_cfg(epochs=2), tmp_path, progress=False, log=False)
    assert [h["epoch"] for h in hist] == [1, 2]


def test_config_validation():
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"train": {"epocs": 3}})
    with pytest.raises(ValueError, match="unknown key 'data.set'"):
        TrainConfig.from_dict({"data": {"set": "mnist"}})
    with pytest.raises(ValueError, match="non-negative"):
        TrainConfig.from_dict({"train": {"eps": -0.1}})
    cfg = TrainConfig.from_dict({"name": "x", "data": {"dataset": "digits"}, "model": {"arch": "mlp"},
                                 "train": {"epochs": 2}, "eval": {"eps": 0.2}})
    assert (cfg.data, cfg.arch, cfg.epochs, cfg.eval_eps) == ("digits", "mlp", 2, 0.2)


def test_ibp_training_makes_the_net_certifiable(tmp_path):
    test = load_dataset("digits", "test")
    cfg = tiny_cfg(epochs=12, train_n=None, eps=0.1, warmup_epochs=1, ramp_epochs=6, kappa_end=0.5, eval_n=50)
    ibp_model, _ = train(cfg, tmp_path / "ibp", progress=False, log=False)
    std_model, _ = train(tiny_cfg(epochs=12, train_n=None, objective="standard", eval_n=50), tmp_path / "std",
                         progress=False, log=False)
    ibp, std = evaluate(ibp_model, test, 0.05), evaluate(std_model, test, 0.05)
    assert ibp["clean_acc"] > 0.8
    assert ibp["cert_acc"] > 0.5 > std["cert_acc"]


CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    import tomllib

    from certkit.generative.train import VAEConfig
    from certkit.train import TrainConfig

    raw = tomllib.loads(path.read_text())
    if path.name.startswith("bnn"):
        from certkit.bayes.run import read_config

        assert read_config(raw)["name"] == path.stem
        return
    cls = VAEConfig if path.name.startswith("provae") else TrainConfig
    cfg = cls.from_dict(raw)
    assert cfg.name == path.stem and cfg.epochs > 0
    if cls is TrainConfig and cfg.objective == "colt":  # one latent ReLU layer per stage after the input stage
        from certkit.data import STATS
        from certkit.models import build
        from certkit.train.colt import latent_layers

        shape = (3, 32, 32) if cfg.data == "cifar10" else (1, 28, 28)
        model = build(cfg.arch, shape, 10, *STATS[cfg.data], **cfg.arch_kwargs)
        assert len(latent_layers(model, cfg.colt.layers)) == len(cfg.colt.stage_epochs) - 1


def test_configs_saved_by_older_runs_upgrade_to_the_nested_sections():
    import dataclasses

    from certkit.train.config import _LEGACY, TrainConfig, trained_noise, upgrade_config

    cfg = TrainConfig.from_dict({"train": {"objective": "stability"}, "smoothing": {"sigma": 0.5, "m": 3},
                                 "colt": {"layers": [2]}})
    new = cfg.to_dict()
    legacy = {k: v for k, v in new.items() if k not in ("colt", "smoothing")}  # what runs saved before
    for key, (section, name) in _LEGACY.items():
        legacy[key] = new[section][name]
    assert upgrade_config(legacy) == new and upgrade_config(new) == new
    assert dataclasses.astuple(trained_noise(legacy)) == ("gaussian", 0.5) == dataclasses.astuple(trained_noise(new))
    assert trained_noise({**new, "objective": "ibp"}) is None


def test_a_run_saved_with_the_flat_config_of_older_versions_resumes(tmp_path):
    import json

    from certkit.train.config import _LEGACY

    cfg = tiny_cfg(objective="standard", epochs=2)
    train(cfg, tmp_path, progress=False, log=False, until=1)
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    new = json.loads(state["config"])
    legacy = {k: v for k, v in new.items() if k not in ("colt", "smoothing")}
    for key, (section, name) in _LEGACY.items():
        legacy[key] = new[section][name]
    state["config"] = json.dumps(legacy)
    torch.save(state, tmp_path / "train_state.pt")
    _, history = train(cfg, tmp_path, progress=False, log=False)
    assert [h["epoch"] for h in history] == [1, 2]
    from certkit.train.config import SmoothingConfig

    with pytest.raises(ValueError, match="smoothing"):  # a real difference is still refused
        train(tiny_cfg(objective="standard", epochs=2, smoothing=SmoothingConfig(sigma=0.5)), tmp_path,
              progress=False, log=False)
