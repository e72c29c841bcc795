"""Class prototypes: means and k-means centres per class."""

from __future__ import annotations

import numpy as np

from megaclass.export.enrol.prototypes import class_prototypes, l2_normalize


def test_mean_prototype_is_normalised_class_mean():
    emb = np.array([[1, 0], [0, 1], [1, 0], [-1, 0]], np.float32)
    protos, ids = class_prototypes(emb, np.array([7, 7, 3, 3]))
    assert ids.tolist() == [3, 7]
    np.testing.assert_allclose(protos[1], [2**-0.5, 2**-0.5], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1)[1], 1.0, atol=1e-6)


def test_several_centres_for_a_multimodal_class():
    rng = np.random.default_rng(0)
    a = l2_normalize(np.array([1, 0, 0], np.float32) + rng.normal(0, 0.01, (10, 3)).astype(np.float32))
    b = l2_normalize(np.array([0, 1, 0], np.float32) + rng.normal(0, 0.01, (10, 3)).astype(np.float32))
    protos, ids = class_prototypes(np.concatenate([a, b]), np.zeros(20, np.int64), per_class=2)
    assert ids.tolist() == [0, 0]
    assert sorted(np.argmax(protos, axis=1).tolist()) == [0, 1]


def test_class_with_fewer_samples_than_centres_keeps_its_samples():
    protos, ids = class_prototypes(np.eye(3, dtype=np.float32)[:1], np.array([5]), per_class=4)
    assert ids.tolist() == [5] and protos.shape == (1, 3)
