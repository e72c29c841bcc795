"""End to end: the training loop on a tiny synthetic set of blob patterns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megaclass.export.config import TrainConfig, replace
from megaclass.export.enrol.embedding import embed_images
from megaclass.export.train.training import (
    batch_size_for,
    lr_at,
    m_per_class_indices,
    retrieval_eval_fn,
    train_encoder,
    train_on_batches,
)
from megaclass.python_backend.serving.encoder_model import load_encoder

SIZE = 16


def blob_set(classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each class a random smooth blob pattern; samples shifted by up to 3 px (wrapping), noisy, dimmed.

    Returns (images uint8 [N, S, S], labels, the class patterns); the same `seed` gives the same patterns.
    """
    rng = np.random.default_rng(0)
    coarse = rng.random((classes, 4, 4))
    patterns = np.kron(coarse, np.ones((4, 4)))  # [C, 16, 16] blocks
    patterns = (patterns > 0.5).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    images = np.empty((len(labels), SIZE, SIZE), dtype=np.float32)
    for i, c in enumerate(labels):
        dy, dx = rng.integers(-3, 4, size=2)
        img = np.roll(patterns[c], (dy, dx), axis=(0, 1)) * rng.uniform(0.6, 1.0)
        images[i] = img + rng.normal(0, 0.35, img.shape)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64), patterns


def precision_at_1(model: torch.nn.Module, query, q_labels, gallery, g_labels) -> float:
    q, g = embed_images(model, query), embed_images(model, gallery)
    nearest = np.argmax(q @ g.T, axis=1)
    return float(np.mean(g_labels[nearest] == q_labels))


# One thread: the CI machine is small and shared; OpenMP threads spin badly under contention.
CFG = TrainConfig(embedding_dim=32, width=8, batch_size=80, samples_per_class=4, epochs=6, lr=5e-3, threads=1)


@pytest.fixture(scope="module")
def data():
    train = blob_set(20, 40, seed=1)
    test = blob_set(20, 6, seed=2)
    return train, test


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    (x, y, _), (xq, yq, _) = data
    out = tmp_path_factory.mktemp("run")
    evals = []

    def eval_fn(model):
        p = precision_at_1(model, xq, yq, x, y)
        evals.append(p)
        return {"precision_at_1": p}

    torch.manual_seed(0)
    untrained = precision_at_1(load_like(CFG), xq, yq, x, y)
    result = train_encoder(x, y, CFG, out, progress=False, eval_fn=eval_fn)
    return result, untrained, out


def load_like(cfg: TrainConfig):
    from megaclass.python_backend.serving.encoder_model import build_encoder

    return build_encoder(cfg, SIZE).eval()


def test_loss_falls_and_precision_rises(trained):
    result, untrained, _ = trained
    assert len(result.history) == CFG.epochs
    p1 = result.history[-1]["precision_at_1"]
    assert p1 > 0.75 and p1 > untrained + 0.3, (untrained, p1)  # chance is 0.05
    # With semi-hard mining the loss is a mean over the (ever fewer) violating triplets,
    # so it falls only a little; with every triplet it falls clearly.
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_loss_falls_with_all_triplets(data, tmp_path):
    (x, y, _), _ = data
    result = train_encoder(x, y, replace(CFG, mining="all"), tmp_path, progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.75 * losses[0], losses


def test_metrics_file_and_checkpoint(trained):
    result, _, out = trained
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "train_s", "elapsed_s", "lr", "precision_at_1"} <= set(lines[0])
    ckpt = torch.load(result.checkpoint_path, weights_only=True)
    assert ckpt["epoch"] == 6 and ckpt["config"]["loss"] == "triplet"
    assert ckpt["model_args"] == {"embedding_dim": 32, "width": 8, "in_channels": 1, "convs_per_stage": 1}
    model = load_encoder(result.checkpoint_path)
    x = torch.rand(5, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model(x))
        assert torch.allclose(model(x).norm(dim=1), torch.ones(5), atol=1e-5)


def test_resume_equals_uninterrupted(data, tmp_path):
    (x, y, _), _ = data
    cfg = replace(CFG, epochs=2)
    steps_per_epoch = len(x) // cfg.batch_size
    calls = []

    def interrupt_in_epoch_2(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        calls.append(1)
        if len(calls) > steps_per_epoch:
            raise KeyboardInterrupt
        return batch

    def identity(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return batch

    straight = train_encoder(x, y, cfg, tmp_path / "a", augment=identity, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_encoder(x, y, cfg, tmp_path / "b", augment=interrupt_in_epoch_2, progress=False)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = train_encoder(x, y, cfg, tmp_path / "b", augment=identity, progress=False, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]
    again = train_encoder(x, y, cfg, tmp_path / "b", progress=False, resume=True)  # already done: no-op
    assert again.history == resumed.history


def test_time_budget_stops_early(data, tmp_path):
    (x, y, _), _ = data
    cfg = replace(CFG, epochs=1000, max_minutes=0.02)
    result = train_encoder(x, y, cfg, tmp_path, progress=False)
    assert 1 <= len(result.history) < 1000
    assert result.history[-1]["stopped"] == "time budget"
    assert result.history[-1]["lr"] < 0.2 * cfg.lr  # the schedule followed the clock


def test_time_budget_spent_before_an_epochs_first_batch_still_records_the_stop(tmp_path):
    """A slow first batch (a loaded machine) spends the budget: the started epoch still runs a step and says why it stopped."""
    import time

    from megaclass.python_backend.serving.encoder_model import VectorEncoder

    rng = np.random.default_rng(0)
    xs, ys = torch.from_numpy(rng.normal(size=(16, 8)).astype(np.float32)), torch.arange(16) % 4

    def batches(epoch):
        if epoch == 1:
            time.sleep(0.7)  # past the 0.6 s budget before the first batch arrives
        for _ in range(3):
            yield xs, ys

    cfg = replace(CFG, loss="contrastive", mining="all", epochs=50, max_minutes=0.01)
    result = train_on_batches(VectorEncoder(8, 8, 16), batches, 3, 4, cfg, tmp_path, progress=False)
    assert len(result.history) == 2
    assert result.history[-1]["stopped"] == "time budget"
    assert result.history[-1]["steps"] >= 1


def test_augment_is_called_with_seeded_generator(data, tmp_path):
    (x, y, _), _ = data
    seen = []

    def augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seen.append(batch.shape)
        return (batch + 0.05 * torch.randn(batch.shape, generator=gen)).clamp(0, 1)

    cfg = replace(CFG, epochs=1)
    a = train_encoder(x, y, cfg, tmp_path / "a", augment=augment, progress=False)
    b = train_encoder(x, y, cfg, tmp_path / "b", augment=augment, progress=False)
    assert seen and seen[0] == (80, 1, SIZE, SIZE)
    assert a.history[0]["loss"] == b.history[0]["loss"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda(data, tmp_path):
    (x, y, _), (xq, yq, _) = data
    result = train_encoder(x, y, replace(CFG, device="cuda", epochs=2), tmp_path, progress=False)
    assert next(result.model.parameters()).is_cuda
    assert precision_at_1(result.model, xq, yq, x, y) > 0.3
    cpu = load_encoder(result.checkpoint_path)
    assert not next(cpu.parameters()).is_cuda


def test_retrieval_eval_fn(trained, data):
    result, _, _ = trained
    (x, y, _), (xq, yq, _) = data
    per_image = retrieval_eval_fn(x, y, xq, yq, ks=(1, 5))(result.model)
    assert per_image["precision_at_1"] == pytest.approx(precision_at_1(result.model, xq, yq, x, y))
    assert per_image["hit_rate_at_5"] >= per_image["precision_at_1"]
    protos = retrieval_eval_fn(x, y, xq, yq, prototypes=True)(result.model)
    assert protos["map_at_r"] == pytest.approx(protos["precision_at_1"]) and protos["precision_at_1"] > 0.75


def test_sampler_gives_m_per_class_and_is_seeded():
    labels = np.repeat(np.arange(10), 5)
    idx = m_per_class_indices(labels, 4, 20, steps=3, seed=7)
    assert len(idx) == 60
    for b in range(3):
        counts = np.bincount(labels[idx[b * 20 : (b + 1) * 20]], minlength=10)
        assert sorted(counts[counts > 0]) == [4] * 5
    np.testing.assert_array_equal(idx, m_per_class_indices(labels, 4, 20, steps=3, seed=7))
    assert not np.array_equal(idx, m_per_class_indices(labels, 4, 20, steps=3, seed=8))


def test_batch_size_and_schedule():
    assert batch_size_for(20, 4, 256) == 80
    assert batch_size_for(1000, 4, 250) == 248
    with pytest.raises(ValueError):
        batch_size_for(1, 4, 256)
    assert lr_at(0.0, 1.0, 0.1) == 0.0
    assert lr_at(0.1, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(0.55, 1.0, 0.1) == pytest.approx(0.5)
    assert lr_at(1.0, 1.0, 0.1) == pytest.approx(0.0)
