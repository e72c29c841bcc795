"""Index-mined negatives on a hand-made set whose neighbours are known; the schedule; mined batches."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.export.config import IndexConfig, NegativesConfig
from megaclass.export.train.negatives import (
    mine_negatives,
    mined_batches,
    read_tiers,
    tier_mix,
    write_tiers,
)
from megaclass.python_backend.index.routed_index import RoutedIndex


def _unit(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a), 0.0, 0.0], np.float32)


@pytest.fixture
def index() -> RoutedIndex:
    # class 10 at 0°; 11 at 20° (cos 0.94), 12 at 55° (cos 0.57), 13 at 95° (cos -0.09) from it
    protos = np.stack([_unit(0), _unit(20), _unit(55), _unit(95)])
    ids = np.array([10, 11, 12, 13])
    return RoutedIndex.build(protos, ids, {int(c): str(c) for c in ids}, IndexConfig(nlist=1, nprobe=1))


def test_tiers_follow_fixed_score_bands(index, tmp_path):
    cfg = NegativesConfig(neighbours=3, bands="fixed", hard_min=0.75, soft_min=0.5)
    tiers = mine_negatives(index, cfg)
    assert tiers.bands == (0.5, 0.75)
    assert tiers.of(10, "hard").tolist() == [11]
    assert tiers.of(10, "soft").tolist() == [12]
    assert tiers.of(10, "easy").tolist() == [13]
    assert 10 not in tiers.neighbours[tiers.classes == 10]  # never itself
    # 12 (55°): 11 at 35° hard (0.82), 13 at 40° hard (0.77), 10 at 55° soft (0.57)
    assert sorted(tiers.of(12, "hard").tolist()) == [11, 13] and tiers.of(12, "soft").tolist() == [10]
    back = read_tiers(write_tiers(tiers, tmp_path / "neg.csv"))
    assert back.neighbours.tolist() == tiers.neighbours.tolist() and back.tiers.tolist() == tiers.tiers.tolist()
    assert np.allclose(back.scores, tiers.scores, atol=1e-6)


def test_quantile_bands_follow_the_mined_scores(index):
    # the 12 mined scores are the 6 pair cosines, each twice: cos 95° -0.087, 75° 0.259, 55° 0.574,
    # 40° 0.766, 35° 0.819, 20° 0.940. Linear quantiles of the 12: 1/3 at position 11/3 (between the
    # 4th and 5th), 0.259 + 2/3 * (0.574 - 0.259) = 0.469; 2/3 at 22/3, 0.766 + 1/3 * (0.819 - 0.766) = 0.784
    cos = np.cos(np.deg2rad([95, 75, 55, 40, 35, 20]))
    tiers = mine_negatives(index, NegativesConfig(neighbours=3))  # the default: bands = "quantile", thirds
    assert tiers.bands == pytest.approx((cos[1] + 2 / 3 * (cos[2] - cos[1]), cos[3] + 1 / 3 * (cos[4] - cos[3])))
    assert tiers.counts() == {"easy": 4, "soft": 4, "hard": 4}  # a third each
    pair_tier = {frozenset((c, n)): t for c, n, t in zip(tiers.classes, tiers.neighbours, tiers.tiers, strict=True)}
    hard, soft, easy = 2, 1, 0
    assert pair_tier == {
        frozenset((10, 11)): hard,  # 0.940
        frozenset((11, 12)): hard,  # 0.819
        frozenset((12, 13)): soft,  # 0.766: hard under the fixed 0.75 band, soft among these scores
        frozenset((10, 12)): soft,  # 0.574
        frozenset((11, 13)): easy,  # 0.259
        frozenset((10, 13)): easy,  # -0.087
    }
    top = mine_negatives(index, NegativesConfig(neighbours=3, soft_quantile=0.5, hard_quantile=0.9))
    assert top.counts()["hard"] == 2 and top.of(10, "hard").tolist() == [11]  # only 0.940 is above the 0.9 quantile


def test_bad_band_settings_are_refused(index):
    with pytest.raises(ValueError, match="soft_quantile"):
        mine_negatives(index, NegativesConfig(soft_quantile=0.8, hard_quantile=0.5))
    with pytest.raises(ValueError, match="must not exceed"):
        mine_negatives(index, NegativesConfig(bands="fixed", soft_min=0.9, hard_min=0.5))
    with pytest.raises(ValueError, match="'quantile' or 'fixed'"):
        mine_negatives(index, NegativesConfig(bands="percentile"))


def test_fewer_neighbours_keeps_the_nearest(index):
    tiers = mine_negatives(index, NegativesConfig(neighbours=1))
    assert dict(zip(tiers.classes.tolist(), tiers.neighbours.tolist(), strict=True)) == {10: 11, 11: 10, 12: 11, 13: 12}


def test_schedule_moves_from_easy_to_hard():
    cfg = NegativesConfig()
    assert tier_mix(cfg, 0.0).tolist() == [1.0, 0.0, 0.0]
    assert tier_mix(cfg, 1.0) == pytest.approx([0.0, 0.25, 0.75])
    assert tier_mix(cfg, 0.5)[2] == pytest.approx(0.375)
    assert tier_mix(NegativesConfig(tiers=("hard",)), 0.5).tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="unknown negative tier"):
        tier_mix(NegativesConfig(tiers=("medium",)), 0.5)


def test_bad_tiers_file_names_the_line(tmp_path):
    (tmp_path / "neg.csv").write_text("class,neighbour,score,tier\n1,2,0.5,soft\n1,3,0.2,medium\n")
    with pytest.raises(ValueError, match=r"neg\.csv:3: expected class,neighbour,score,tier"):
        read_tiers(tmp_path / "neg.csv")


def test_mined_batches_pair_classes_with_their_hard_neighbours(index):
    tiers = mine_negatives(index, NegativesConfig(neighbours=3, bands="fixed"))  # every class has a hard one
    cfg = NegativesConfig(neighbours=3, tiers=("hard",), mix_start=(0.0, 0.0, 1.0), negative_share=0.5)
    classes = np.array([10, 11, 12, 13])
    targets = np.repeat(np.arange(4), 3)
    images = (targets[:, None, None] * np.ones((1, 8, 8))).astype(np.uint8)
    batches = mined_batches(
        images, targets, tiers, classes, cfg, m=2, batch=4, steps=50, epochs=1, seed=0, augment=None
    )
    for x, y in batches(0):
        pair = sorted(classes[np.unique(y.numpy())].tolist())
        assert len(y) == 4 and len(pair) == 2
        hard = {10: {11}, 11: {10, 12}, 12: {11, 13}, 13: {12}}
        assert pair[1] in hard[pair[0]]  # an anchor class and one of its hard neighbours
        assert (x.numpy()[:, 0, 0, 0] * 255).round().tolist() == np.repeat(y.numpy(), 1).tolist()
