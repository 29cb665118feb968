"""Self-training (pseudo-labelled unlabeled pool mixed into every batch) and pre-training on another data set."""

import pytest
import torch

from certkit.data import Dataset, load_dataset
from certkit.errors import ConfigError
from certkit.io import CheckpointError, load_model
from certkit.nn import Normalize
from certkit.train import TrainConfig, train
from certkit.train.batches import MixedBatches, SelfTrainingConfig, pseudo_labels, split_pool


def digits(n=600):
    return load_dataset("digits", "train").subset(0, n)


def base_cfg(**kw):
    base = dict(name="st", data="digits", arch="small-conv", objective="gaussian", epochs=2, batch_size=64,
                lr=2e-3, eps=0.25, eval_eps=0.0, eval_n=50)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    labeled = digits().subset(0, 200)  # the teacher sees only the labeled images
    train(base_cfg(objective="standard", epochs=3), out, progress=False, log=False, train_set=labeled)
    return str(out / "model.safetensors")


def test_batches_keep_the_ratio_and_cover_the_labeled_set_once_per_epoch():
    data = digits(300)
    labeled, pool_x = split_pool(data, 100, None)
    assert len(labeled) == 100 and len(pool_x) == 200
    pseudo = torch.arange(200) % 10
    mix = MixedBatches(labeled, pool_x, pseudo, batch_size=32, fraction=0.75, seed=3)
    assert (mix.k_labeled, mix.k_pool, mix.steps_per_epoch) == (8, 24, 13)
    for epoch in (0, 1):
        seen = []
        for b in range(mix.steps_per_epoch):
            x, y = mix(epoch, b)
            n_lab = min(8, 100 - 8 * b)
            n_pool = 24 if n_lab == 8 else round(n_lab * 3)
            assert len(x) == len(y) == n_lab + n_pool  # the last batch (4 labeled) takes 12 pool images
            lab_x = x[:n_lab]
            seen += [int(torch.nonzero((labeled.x == xi).flatten(1).all(1))[0]) for xi in lab_x]
            pool_rows = [int(torch.nonzero((pool_x == xi).flatten(1).all(1))[0]) for xi in x[n_lab:]]
            assert torch.equal(y[n_lab:], pseudo[pool_rows])  # pool images carry their pseudo-labels
        assert sorted(seen) == list(range(100))
    again = MixedBatches(labeled, pool_x, pseudo, batch_size=32, fraction=0.75, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(mix(1, 5), again(1, 5)))  # (seed, epoch) fixes the batches


def test_pseudo_labels_are_the_teachers_predictions_and_are_cached(tmp_path, teacher):
    pool_x = digits().x[200:]
    model, _ = load_model(teacher)
    cache = tmp_path / "pseudo.safetensors"
    labels = pseudo_labels(teacher, pool_x, 10, cache=cache)
    assert torch.equal(labels, model(pool_x).argmax(1))
    stamp = cache.stat().st_mtime_ns
    assert torch.equal(pseudo_labels(teacher, pool_x, 10, cache=cache), labels) and cache.stat().st_mtime_ns == stamp
    other = pool_x.flip(0)  # another pool: the cache does not apply
    assert torch.equal(pseudo_labels(teacher, other, 10, cache=cache), model(other).argmax(1))
    with pytest.raises(CheckpointError, match="classes"):
        pseudo_labels(teacher, pool_x, 3)


@pytest.mark.parametrize("objective", ["gaussian", "smoothadv"])
def test_a_run_never_reads_the_pools_labels(tmp_path, teacher, objective):
    """Scrambling the hidden labels of the pool leaves every weight bit-identical; changing a labeled image's
    label does not (so the comparison can see a label that is used)."""
    data = digits()
    st = SelfTrainingConfig(teacher=teacher, labeled_n=200, unlabeled_fraction=0.5)
    cfg = base_cfg(objective=objective, self_training=st, eps=0.5, ramp_epochs=1)

    def run(y, name):
        ds = Dataset(data.name, data.x, y, data.num_classes, data.mean, data.std)
        model, hist = train(cfg, tmp_path / name, progress=False, log=False, train_set=ds)
        return model, hist

    a, hist = run(data.y.clone(), "a")
    scrambled = data.y.clone()
    scrambled[200:] = torch.randint(0, 10, (400,), generator=torch.Generator().manual_seed(1))
    b, _ = run(scrambled, "b")
    flipped = data.y.clone()
    flipped[:10] = (flipped[:10] + 1) % 10
    c, _ = run(flipped, "c")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert [h["epoch"] for h in hist] == [1, 2] and (tmp_path / "a" / "pseudo_labels.safetensors").exists()


def test_a_killed_self_training_run_resumes_to_the_same_weights(tmp_path, teacher):
    st = SelfTrainingConfig(teacher=teacher, labeled_n=200, pool_n=300, unlabeled_fraction=0.25)
    cfg = base_cfg(self_training=st, epochs=3)
    full, _ = train(cfg, tmp_path / "a", progress=False, log=False, train_set=digits())
    train(cfg, tmp_path / "b", progress=False, log=False, train_set=digits(), until=1)
    resumed, hist = train(cfg, tmp_path / "b", progress=False, log=False, train_set=digits())
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), resumed.parameters()))


def test_self_training_config_errors(tmp_path, teacher):
    raw = {"data": {"dataset": "digits"}, "model": {"arch": "small-conv"}, "train": {"objective": "gaussian"}}
    with pytest.raises(ConfigError, match="labeled_n"):
        TrainConfig.from_dict({**raw, "self_training": {"teacher": teacher}})
    with pytest.raises(ConfigError, match="unlabeled_fraction"):
        TrainConfig.from_dict({**raw, "self_training": {"teacher": teacher, "labeled_n": 10,
                                                        "unlabeled_fraction": 1.0}})
    with pytest.raises(ConfigError, match="need a teacher"):
        TrainConfig.from_dict({**raw, "self_training": {"labeled_n": 10}})
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({**raw, "self_training": {"teacher": teacher, "labeled": 10}})
    cfg = TrainConfig.from_dict({**raw, "self_training": {"teacher": teacher, "labeled_n": 600}})
    with pytest.raises(ConfigError, match="no unlabeled pool"):
        train(cfg, tmp_path / "x", progress=False, log=False, train_set=digits())


def test_pretraining_on_another_data_set_keeps_this_runs_normalisation(tmp_path):
    """[model] init from a checkpoint of the same architecture trained on data with other statistics: the weights
    are the checkpoint's, the Normalize layer is the new data's."""
    data = digits()
    other = Dataset("other", 1 - data.x, data.y, 10, (0.7,), (0.2,))  # another data set, other mean and std
    train(base_cfg(objective="standard", epochs=1), tmp_path / "pre", progress=False, log=False, train_set=other)
    pre_path = str(tmp_path / "pre/model.safetensors")
    cfg = base_cfg(objective="standard", epochs=1, lr=0.0, optimizer="sgd", init=pre_path)
    tuned, _ = train(cfg, tmp_path / "ft", progress=False, log=False, train_set=data)
    pre, _ = load_model(tmp_path / "pre/model.safetensors")
    norm = next(m for m in tuned.modules() if isinstance(m, Normalize))
    assert torch.allclose(norm.mean, torch.tensor(data.mean)) and torch.allclose(norm.std, torch.tensor(data.std))
    sd_pre, sd_new = pre.state_dict(), tuned.state_dict()
    weights = [k for k in sd_new if not k.endswith(("mean", "std"))]
    assert weights and all(torch.equal(sd_pre[k], sd_new[k]) for k in weights)
    _, meta = load_model(tmp_path / "ft/model.safetensors")
    assert meta["arch"]["mean"] == pytest.approx(list(data.mean))
