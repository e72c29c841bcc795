"""The training loop: m-per-class batches, a registered loss (and miner), AdamW, cosine LR.

`train_encoder` trains on an in-memory array of images; `train_on_batches` is the same loop
over any per-epoch batch stream (e.g. the synthetic generator), so both share checkpoints,
resume, the time budget and the metrics file.

Reproducible by seed: the model is initialised from `cfg.seed`, and each epoch draws its
sampler order, augmentation and loss sampling from seeds derived from (seed, epoch), so a
resumed run continues exactly as an uninterrupted one would. With `cfg.max_minutes` set, the
LR schedule follows max(step progress, time progress) so the cosine decay ends with the
budget; such runs are not bit-reproducible.

Files in `out_dir`: `checkpoint.pt` (after every epoch; plain tensors and Python values, loads
with `torch.load(weights_only=True)`) and `metrics.jsonl` (one JSON object per epoch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions as pml_common
from torch import nn
from tqdm.auto import tqdm

from megaclass.export.config import TrainConfig
from megaclass.export.enrol.embedding import embed_images
from megaclass.export.evaluate.metrics import retrieval_metrics
from megaclass.export.train.losses import LossBundle, build_loss
from megaclass.python_backend.serving.encoder_model import atomic_save, build_encoder
from megaclass.python_backend.serving.preprocess import to_model_input

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
EvalFn = Callable[[nn.Module], dict[str, Any]]
# (inputs, labels) or (inputs, labels, indices_tuple): a stream that names its own pairs / triplets
# (tuple training) skips the miner; PML's losses take them as `indices_tuple`.
Batch = tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]
BatchStream = Callable[[int], Iterable[Batch]]


@dataclass
class TrainResult:
    """The trained model (eval mode), where its checkpoint is, and one metrics dict per epoch."""

    model: nn.Module
    checkpoint_path: Path
    history: list[dict[str, Any]]


def resolve_device(name: str) -> torch.device:
    """`"auto"` -> cuda when available, else cpu; anything else as given (ValueError: cuda asked for, none here)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use device 'auto' or 'cpu'")
    return device


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit seed for (seed, epoch, stream), independent across the three."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]) >> 1


def lr_at(progress: float, base_lr: float, warmup_fraction: float) -> float:
    """Linear warm-up over the first `warmup_fraction` of training, then cosine decay to 0."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return base_lr * progress / warmup_fraction
    rest = (progress - warmup_fraction) / max(1.0 - warmup_fraction, 1e-12)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * rest))


def batch_size_for(num_classes: int, samples_per_class: int, batch_size: int) -> int:
    """The largest batch <= `batch_size` that is a multiple of m and holds distinct classes."""
    m = samples_per_class
    b = min(batch_size, m * num_classes)
    b -= b % m
    if b < 2 * m:
        raise ValueError(f"need at least 2 classes of m={m} per batch; batch_size={batch_size}, classes={num_classes}")
    return b


def m_per_class_indices(labels: np.ndarray, m: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """`[steps * batch_size]` sample indices, each batch m samples of batch_size / m classes.

    PML's `MPerClassSampler` draws from a module-global numpy RNG; it is swapped for a
    seeded one here so the order depends only on `seed`.
    """
    sampler = MPerClassSampler(labels, m, batch_size=batch_size, length_before_new_iter=steps * batch_size)
    previous = pml_common.NUMPY_RANDOM
    pml_common.NUMPY_RANDOM = np.random.RandomState(seed % 2**32)
    try:
        return np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))
    finally:
        pml_common.NUMPY_RANDOM = previous


def _plain(x: Any) -> Any:
    """Numpy / torch scalars and containers -> plain Python (JSON and weights_only safe)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic | torch.Tensor) and np.ndim(x) == 0:
        return x.item()
    if isinstance(x, np.ndarray | torch.Tensor):
        return np.asarray(x).tolist()
    return x


def retrieval_eval_fn(
    gallery_images: np.ndarray,
    gallery_labels: np.ndarray,
    query_images: np.ndarray,
    query_labels: np.ndarray,
    ks: tuple[int, ...] = (1, 5),
    prototypes: bool = False,
) -> EvalFn:
    """An `eval_fn` for `train_encoder`: exact-search retrieval metrics of the queries.

    With `prototypes`, the gallery is one L2-normalised mean embedding per class (as served),
    so MAP@R equals precision@1; otherwise every gallery image is a neighbour.
    """

    def evaluate(model: nn.Module) -> dict[str, float]:
        gallery, labels = embed_images(model, gallery_images), np.asarray(gallery_labels)
        if prototypes:
            labels, inverse = np.unique(labels, return_inverse=True)
            sums = np.zeros((len(labels), gallery.shape[1]), dtype=np.float32)
            np.add.at(sums, inverse, gallery)
            gallery = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        return retrieval_metrics(embed_images(model, query_images), query_labels, gallery, labels, ks)

    return evaluate


def train_encoder(
    images: np.ndarray,
    labels: np.ndarray,
    cfg: TrainConfig,
    out_dir: Path,
    augment: Augment | None = None,
    progress: bool = True,
    eval_fn: EvalFn | None = None,
    resume: bool = False,
    model: nn.Module | None = None,
) -> TrainResult:
    """Train an encoder on uint8 `images [N, S, S]` with int `labels [N]`.

    `augment(batch [B,1,S,S] float, generator) -> batch` distorts training batches (e.g.
    `lambda x, g: augment_batch(x, aug_cfg, g)`). `model` defaults to `build_encoder(cfg, S)`.
    With `resume`, training continues from `out_dir/checkpoint.pt` when it exists.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be [N, S, S], got {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    classes, targets = np.unique(np.asarray(labels), return_inverse=True)
    targets = targets.astype(np.int64)
    image_size = images.shape[1]
    batch = batch_size_for(len(classes), cfg.samples_per_class, cfg.batch_size)
    steps = max(len(images) // batch, 1)
    labels_t = torch.from_numpy(targets)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = m_per_class_indices(targets, cfg.samples_per_class, batch, steps, epoch_seed(cfg.seed, epoch, 1))
        gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 2))
        for b in range(steps):
            idx = order[b * batch : (b + 1) * batch]
            x = torch.from_numpy(to_model_input(images[idx]))
            if augment is not None:
                x = augment(x, gen)
            yield x, labels_t[idx]

    if model is None:
        torch.manual_seed(cfg.seed)
        model = build_encoder(cfg, image_size)
    meta = {"image_size": image_size, "classes": torch.from_numpy(classes.astype(np.int64)), "batch_size": batch}
    return train_on_batches(
        model, batches, steps, len(classes), cfg, out_dir, progress=progress, eval_fn=eval_fn, resume=resume, meta=meta
    )


def train_on_batches(
    model: nn.Module,
    batches: BatchStream,
    steps_per_epoch: int,
    num_classes: int,
    cfg: TrainConfig,
    out_dir: Path,
    progress: bool = True,
    eval_fn: EvalFn | None = None,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
) -> TrainResult:
    """The training loop over `batches(epoch) -> iterable of (inputs, labels in 0..num_classes-1)`.

    A batch may carry a third element, its own `indices_tuple` (pairs `(a1, p, a2, n)` or triplets
    `(a, p, n)` of row indices): the loss then uses those instead of the miner's.

    `model` must have `args` (its constructor kwargs) and may have `forward_unnormalized`,
    which the loss then reads (all registered losses normalise themselves where they need to).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
    device = resolve_device(cfg.device)

    torch.manual_seed(cfg.seed)
    bundle = build_loss(cfg, num_classes, model.args["embedding_dim"])
    model.to(device)
    bundle.loss.to(device)
    opt, sparse_opt = _optimisers(model, bundle.loss, cfg)

    start_epoch, step, elapsed, history = 0, 0, 0.0, []
    if resume and ckpt_path.exists():
        start_epoch, step, elapsed, history = _resume(ckpt_path, device, model, bundle.loss, opt, sparse_opt, cfg)
    # The metrics file mirrors the checkpoint's history (a crash between the two writes loses nothing).
    metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))

    run = _start_run(model, bundle, [o for o in (opt, sparse_opt) if o is not None], device, cfg, steps_per_epoch)
    budget_s = run.budget_s
    out_of_time = budget_s is not None and elapsed >= budget_s

    for epoch in range(start_epoch, cfg.epochs):
        if out_of_time:
            break
        torch.manual_seed(epoch_seed(cfg.seed, epoch, 3))
        model.train()
        bundle.loss.train()
        t0 = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        losses, lr, step, out_of_time = _train_epoch(run, batches(epoch), bar, step, elapsed, t0)
        bar.close()
        if not losses:
            break
        record = _epoch_record(epoch, losses, lr, time.perf_counter() - t0, model, eval_fn)
        elapsed += time.perf_counter() - t0
        record["elapsed_s"] = elapsed
        # the budget may run out during the epoch's last step: this epoch is then the last one
        out_of_time = out_of_time or (budget_s is not None and elapsed >= budget_s and epoch + 1 < cfg.epochs)
        if out_of_time:
            record["stopped"] = "time budget"
        history.append(_plain(record))
        _save_checkpoint(ckpt_path, model, bundle.loss, opt, sparse_opt, cfg, epoch + 1, step, elapsed, history, meta)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(history[-1]) + "\n")
        if progress:
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))

    if not ckpt_path.exists():  # nothing ran (zero epochs or no time): still leave a loadable file
        _save_checkpoint(ckpt_path, model, bundle.loss, opt, sparse_opt, cfg, 0, step, elapsed, history, meta)
    model.to(memory_format=torch.contiguous_format)
    return TrainResult(model.eval(), ckpt_path, history)


def _optimisers(
    model: nn.Module, loss: nn.Module, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """AdamW over the model and the loss's dense parameters; SparseAdam over its sparse ones (partial FC)."""
    sparse_fn = getattr(loss, "sparse_parameters", None)
    sparse = list(sparse_fn()) if sparse_fn else []
    sparse_ids = {id(p) for p in sparse}
    dense = list(model.parameters()) + [p for p in loss.parameters() if id(p) not in sparse_ids]
    opt = torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.SparseAdam(sparse, lr=cfg.lr) if sparse else None


def _resume(
    ckpt_path: Path,
    device: torch.device,
    model: nn.Module,
    loss: nn.Module,
    opt: torch.optim.Optimizer,
    sparse_opt: torch.optim.Optimizer | None,
    cfg: TrainConfig,
) -> tuple[int, int, float, list[dict[str, Any]]]:
    """Load model, loss and optimiser state from `ckpt_path`; returns (epoch, step, elapsed_s, history)."""
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
    if ckpt["model_class"] != type(model).__name__ or ckpt["model_args"] != model.args:
        raise ValueError(f"{ckpt_path} holds {ckpt['model_class']}({ckpt['model_args']}), not {model.args}")
    if ckpt["config"]["loss"] != cfg.loss:
        raise ValueError(f"{ckpt_path} was trained with loss {ckpt['config']['loss']!r}, not {cfg.loss!r}")
    model.load_state_dict(ckpt["state_dict"])
    loss.load_state_dict(ckpt["loss_state"])
    opt.load_state_dict(ckpt["optimizer"])
    if sparse_opt is not None:
        sparse_opt.load_state_dict(ckpt["sparse_optimizer"])
    return ckpt["epoch"], ckpt["step"], ckpt["elapsed_s"], ckpt["history"]


@dataclass
class _Run:
    """What every step of a run uses: the embedding, the loss (and miner), optimisers, device and clock."""

    embed: Callable[[torch.Tensor], torch.Tensor]
    bundle: LossBundle
    optimisers: list[torch.optim.Optimizer]
    device: torch.device
    channels_last: bool
    cfg: TrainConfig
    total_steps: int
    budget_s: float | None


def _start_run(
    model: nn.Module,
    bundle: LossBundle,
    optimisers: list[torch.optim.Optimizer],
    device: torch.device,
    cfg: TrainConfig,
    steps_per_epoch: int,
) -> _Run:
    """The run's fixed parts; on the CPU the model goes channels-last (faster convolutions)."""
    channels_last = device.type == "cpu"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return _Run(
        embed=getattr(model, "forward_unnormalized", model),
        bundle=bundle,
        optimisers=optimisers,
        device=device,
        channels_last=channels_last,
        cfg=cfg,
        total_steps=cfg.epochs * steps_per_epoch,
        budget_s=cfg.max_minutes * 60.0 if cfg.max_minutes else None,
    )


def _train_epoch(
    run: _Run, batches: Iterable[Batch], bar: Any, step: int, elapsed: float, t0: float
) -> tuple[list[float], float, int, bool]:
    """One epoch's steps until the batches or the time budget run out; returns (losses, last lr, step, out of time)."""
    cfg, budget_s, losses, lr = run.cfg, run.budget_s, [], run.cfg.lr
    for x, y, *given in batches:
        now = elapsed + time.perf_counter() - t0
        # a started epoch runs at least one step, so its record carries the stop (a slow first batch
        # on a loaded machine would otherwise end the run with no record saying why)
        if budget_s is not None and now >= budget_s and losses:
            return losses, lr, step, True
        frac = (step + 1) / run.total_steps
        if budget_s is not None:
            frac = max(frac, now / budget_s)
        lr = lr_at(frac, cfg.lr, cfg.warmup_fraction)
        for o in run.optimisers:
            for group in o.param_groups:
                group["lr"] = lr
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        if run.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        emb = run.embed(x)
        if given:
            indices = tuple(t.to(run.device, non_blocking=True) for t in given[0])
        else:
            indices = run.bundle.miner(emb, y) if run.bundle.miner is not None else None
        loss = run.bundle.loss(emb, y, indices)
        for o in run.optimisers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in run.optimisers:
            o.step()
        losses.append(loss.item())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
    return losses, lr, step, False


def _epoch_record(
    epoch: int, losses: list[float], lr: float, train_s: float, model: nn.Module, eval_fn: EvalFn | None
) -> dict[str, Any]:
    """The epoch's metrics: mean loss, steps, last lr, training seconds, and `eval_fn`'s metrics."""
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "loss": float(np.mean(losses)),
        "steps": len(losses),
        "lr": lr,
        "train_s": train_s,
    }
    if eval_fn is not None:
        model.eval()
        with torch.no_grad():
            record.update(_plain(eval_fn(model)))
    return record


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    loss: nn.Module,
    opt: torch.optim.Optimizer,
    sparse_opt: torch.optim.Optimizer | None,
    cfg: TrainConfig,
    epoch: int,
    step: int,
    elapsed: float,
    history: list[dict[str, Any]],
    meta: dict[str, Any] | None,
) -> None:
    blob = {
        "format": 1,
        "model_class": type(model).__name__,
        "model_args": dict(model.args),
        "state_dict": {k: v.contiguous() for k, v in model.state_dict().items()},
        "loss_state": loss.state_dict(),
        "optimizer": opt.state_dict(),
        "sparse_optimizer": sparse_opt.state_dict() if sparse_opt is not None else None,
        "config": _plain(dataclasses.asdict(cfg)),
        "epoch": epoch,
        "step": step,
        "elapsed_s": elapsed,
        "history": history,
    }
    blob.update(meta or {})
    atomic_save(blob, path)
