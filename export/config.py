"""One typed configuration for the whole pipeline.

Each concern has its own dataclass; `MegaclassConfig` groups them and is loaded from one
TOML file (`megaclass.toml` by default, every field optional) so no literals are scattered
through the code. `config_hash` gives a stable key for caching artifacts whose inputs did
not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.serving.config import ExportConfig, ServingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlyphDataConfig:
    """How the glyph data set is rendered from the installed fonts."""

    image_size: int = 32
    font_dirs: tuple[str, ...] = ("/usr/share/fonts",)
    # Unicode ranges (inclusive) whose code points become classes.
    ranges: tuple[tuple[int, int], ...] = (
        (0x0021, 0x024F),  # Latin, Latin-1, Latin Extended A/B
        (0x0370, 0x03FF),  # Greek
        (0x0400, 0x04FF),  # Cyrillic
        (0x0590, 0x05FF),  # Hebrew
        (0x0600, 0x06FF),  # Arabic
        (0x1E00, 0x1FFF),  # Latin Extended Additional, Greek Extended
        (0x2000, 0x2BFF),  # punctuation, symbols, arrows, maths, box drawing, shapes, dingbats
        (0x3040, 0x30FF),  # Hiragana, Katakana
        (0x4E00, 0x9FFF),  # CJK Unified Ideographs
        (0xAC00, 0xD7A3),  # Hangul syllables
    )
    min_fonts_per_class: int = 3  # a class needs this many fonts (train + held-out)
    max_classes: int | None = None  # deterministic subset when set
    held_out_fonts: int = 2  # fonts kept out of training (seen classes, unseen appearance)
    held_out_class_fraction: float = 0.0  # classes never trained on, enrolled later
    seed: int = 0
    workers: int = 2
    # Rendering rule, the same for every font: the em square spans `em_fraction` of the image with
    # the baseline at 80 % of it (glyphs keep their relative size: "o" vs "O", "," vs "'"); the ink is
    # centred horizontally; glyphs that would overflow are shrunk to fit and centred.
    em_fraction: float = 0.8
    supersample: int = 4  # render at this multiple of image_size, then box-downsample (anti-aliasing)
    # Drop a rendering byte-identical to an earlier font's for the same class (TTC faces and font
    # variants often share outlines; duplicates would leak held-out fonts and inflate font counts).
    dedupe: bool = True


@dataclass(frozen=True)
class AugmentConfig:
    """Random distortions applied to training images."""

    enabled: bool = True
    max_rotation_deg: float = 8.0
    max_shift: float = 0.08  # fraction of the image size
    scale_range: tuple[float, float] = (0.9, 1.1)
    blur_prob: float = 0.3
    noise_std: float = 0.04
    stroke_prob: float = 0.3  # dilate or erode (stroke width)
    blur_sigma: tuple[float, float] = (0.3, 0.9)  # Gaussian blur sigma in pixels, when blurred
    stroke_amount: tuple[float, float] = (0.3, 1.0)  # blend towards the 3x3 dilated / eroded image


@dataclass(frozen=True)
class TrainConfig:
    """Metric-learning training of the encoder."""

    embedding_dim: int = 128
    width: int = 32  # channels of the first conv block
    convs_per_stage: int = 1  # conv blocks per encoder stage: 1 is ~2x faster on CPU than 2
    loss: Literal["triplet", "contrastive", "cosface", "arcface", "softmax"] = "triplet"
    mining: Literal["easy", "semihard", "hard", "all"] = "semihard"
    margin: float = 0.2
    samples_per_class: int = 4  # m of the m-per-class sampler
    batch_size: int = 256
    epochs: int = 8
    max_minutes: float | None = None  # stop early when the time budget is spent
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"  # "auto", "cpu" or "cuda"
    threads: int | None = None  # torch CPU threads; None: torch's default (one per core)
    warmup_fraction: float = 0.03  # linear LR warm-up, then cosine decay to zero
    contrastive_neg_margin: float = 0.8  # contrastive: negative pairs pushed beyond this distance
    cosface_margin: float = 0.35  # additive cosine margin
    arcface_margin: float = 0.5  # additive angular margin (radians)
    softmax_scale: float = 30.0  # logit scale s of the margin-softmax losses
    partial_fc_classes: int = 8192  # class centres scored per step (batch classes + random others)


@dataclass(frozen=True)
class GateConfig:
    """The quality gate of `megaclass refresh`: a candidate is published only when, on the same held-out
    queries, each metric is at least the serving version's minus its margin (candidate >= serving - margin)."""

    precision_at_1_margin: float = 0.02  # precision@1: share of queries whose top-1 class is right
    hit_rate_at_5_margin: float = 0.02  # hit rate@5: share of queries with the right class in the top 5
    search_recall_margin: float = 0.05  # search recall@5 of the routed index against exact search
    min_queries: int = 1  # refuse when the catalogue has fewer held-out (split=query) rows than this


@dataclass(frozen=True)
class RefreshConfig:
    """When `megaclass refresh` retrains, and how it rebuilds, tunes and publishes."""

    retrain_new_class_share: float = 0.5  # retrain when new classes are more than this share of the catalogue
    retrain_precision_drop: float = 0.05  # ... when serving precision@1 fell by more than this since it was published
    retrain_drift: float = 2.0  # ... when the serving index's drift (RoutedIndex.drift) exceeds this
    warm_start_epochs: int = 2  # epochs of the warm-started retraining (from the serving checkpoint)
    tune_target_recall: float = 0.95  # search recall@top_k the tuned index must reach
    top_k: int = 5  # classes retrieved per query in the evaluation (hit rate@k, search recall@k)
    keep_versions: int = 3  # published versions kept per model


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking and model registry; failures only warn, a command never fails because of them."""

    enabled: bool = True
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else SQLite in work_dir/mlflow/mlflow.db
    experiment: str = "megaclass"
    registered_model: str = "megaclass-classify"  # published versions are versions of this model
    serving_alias: str = "serving"  # the alias of the registered version that serves


@dataclass(frozen=True)
class TupleConfig:
    """Training from a tuple file (`export/data/tuples.py`, `export/train/tuple_training.py`)."""

    # True: items of the batch's other tuples also count as negatives (pseudo-classes = the items a
    # tuple links as similar; the miner `train.mining` picks among them). Safe when a random pair of
    # items is almost never of one class (many classes), as with in-batch negatives in general.
    # False: only the file's own pairs / triplets.
    in_batch_negatives: bool = True
    generated_per_epoch: float = 1.0  # `tuples generate`: tuples per training image of the labelled set


@dataclass(frozen=True)
class NegativesConfig:
    """Index-mined negatives (`export/train/negatives.py`): tiers by score band, and their schedule.

    Of each class's `neighbours` nearest other classes (inner product of class prototypes in the
    routed index), a neighbour with score s >= hard_min is hard, soft_min <= s < hard_min soft,
    s < soft_min easy. With `bands = "quantile"` (the default) the two bounds follow the mining
    encoder's score distribution: they are the `soft_quantile` and `hard_quantile` quantiles of all
    mined neighbour scores (thirds: the top third hard, the bottom third easy), so every tier holds
    neighbours whatever the encoder's scale. With `bands = "fixed"` they are `soft_min` / `hard_min`.
    Training pairs a batch's class with a negative class drawn from `tiers`, weighted by `mix_start`
    at the first epoch moving linearly to `mix_end` at the last (weights in the order easy, soft,
    hard; a tier a class lacks falls back to a random class).
    """

    neighbours: int = 20
    nprobe: int | None = None  # None: the index's own nprobe
    bands: str = "quantile"  # "quantile" (bounds from the mined scores) or "fixed" (soft_min / hard_min)
    soft_quantile: float = 1 / 3  # bands = "quantile": below this quantile of the mined scores: easy
    hard_quantile: float = 2 / 3  # ... at or above this quantile: hard
    hard_min: float = 0.75  # bands = "fixed": score of a hard neighbour
    soft_min: float = 0.5  # bands = "fixed": score of a soft neighbour
    tiers: tuple[str, ...] = ("easy", "soft", "hard")
    mix_start: tuple[float, float, float] = (1.0, 0.0, 0.0)
    mix_end: tuple[float, float, float] = (0.0, 0.25, 0.75)
    negative_share: float = 0.5  # of a batch's classes, this share are drawn as mined negatives


@dataclass(frozen=True)
class MegaclassConfig:
    """Everything, grouped by concern."""

    glyphs: GlyphDataConfig = field(default_factory=GlyphDataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tuples: TupleConfig = field(default_factory=TupleConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    work_dir: str = ".cache/megaclass"


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass `cls` from a (nested) dict, refusing unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = _from_dict(type(default), value)
        elif isinstance(value, list):
            kwargs[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# Named presets: the starting point before a file and overrides are applied.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # The README's main job: a few minutes end to end on a 2-core CPU machine.
    "demo": {
        "glyphs": {"max_classes": 1500, "held_out_fonts": 2, "held_out_class_fraction": 0.1},
        "train": {"epochs": 12, "max_minutes": 3.0, "width": 16},
        "work_dir": ".cache/megaclass/demo",
    },
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


# Deprecated option paths a config file may still use, and where each now lives. Both request limits
# moved into RequestLimits (`[serving.limits]`, #21): `[serving] max_top_k` (was ServingConfig.max_top_k)
# and `[serving.limits] max_bytes_element` (the front's BYTES bound, now `max_image_bytes`, also the
# decode model's). A file that still uses the old path keeps working; loading it logs a warning.
MOVED_OPTIONS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("serving", "max_top_k"), ("serving", "limits", "max_top_k")),
    (("serving", "limits", "max_bytes_element"), ("serving", "limits", "max_image_bytes")),
)


def _table(data: dict[str, Any], keys: tuple[str, ...] | list[str]) -> dict[str, Any]:
    for key in keys:
        data = data.get(key, {})
        if not isinstance(data, dict):
            return {}
    return data


def _without(data: dict[str, Any], path: tuple[str, ...] | list[str]) -> dict[str, Any]:
    head, *rest = path
    if not rest:
        return {k: v for k, v in data.items() if k != head}
    return {**data, head: _without(data[head], rest)}


def _moved_options(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with each deprecated option (MOVED_OPTIONS) at its new path; both set and different: error."""
    for old, new in MOVED_OPTIONS:
        if old[-1] not in _table(data, old[:-1]):
            continue
        value = _table(data, old[:-1])[old[-1]]
        current = _table(data, new[:-1]).get(new[-1], value)
        if current != value:
            raise ValueError(f"{'.'.join(old)} = {value!r} (deprecated) disagrees with {'.'.join(new)} = {current!r}")
        log.warning("config: %s is deprecated, read as %s = %r", ".".join(old), ".".join(new), value)
        moved: Any = value
        for key in reversed(new):
            moved = {key: moved}
        data = _merge(_without(data, old), moved)
    return data


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, defaults: str = "default"
) -> MegaclassConfig:
    """Preset `defaults`, then the TOML file `path` (every field optional), then nested `overrides`.
    Deprecated option paths (MOVED_OPTIONS, e.g. `[serving] max_top_k`) are read at their new place."""
    if defaults not in PRESETS:
        raise ValueError(f"unknown preset {defaults!r}; known: {sorted(PRESETS)}")
    data = dict(PRESETS[defaults])
    if path is not None:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10 (the NGC Triton image): the same parser, backported
            import tomli as tomllib
        with open(path, "rb") as f:
            data = _merge(data, tomllib.load(f))
    data = _merge(data, overrides or {})
    return _from_dict(MegaclassConfig, _moved_options(data))


def replace(cfg: Any, **changes: Any) -> Any:
    """`dataclasses.replace`, re-exported so callers need one import."""
    return dataclasses.replace(cfg, **changes)


def config_hash(*parts: Any) -> str:
    """A short, stable hash of dataclasses / plain values, used as a cache key."""

    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return {k: plain(v) for k, v in dataclasses.asdict(x).items()}
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [plain(v) for v in x]
        if isinstance(x, Path):
            return str(x)
        return x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
