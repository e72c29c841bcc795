"""The typed configuration: presets, TOML files, overrides, unknown keys, hashing."""

from __future__ import annotations

import pytest

from megaclass.export.config import MegaclassConfig, config_hash, load_config


def test_defaults_and_presets():
    assert load_config() == MegaclassConfig()
    assert load_config(defaults="demo").glyphs.max_classes is not None


def test_toml_file_then_overrides(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text("[serving]\nhttp_port = 9000\n[serving.encoder]\ninstances = 2\n[glyphs]\nranges = [[65, 90]]\n")
    cfg = load_config(f, {"serving": {"grpc_port": 9001}})
    assert (cfg.serving.http_port, cfg.serving.grpc_port, cfg.serving.encoder.instances) == (9000, 9001, 2)
    assert cfg.glyphs.ranges == ((65, 90),)
    assert cfg.serving.retriever == MegaclassConfig().serving.retriever


def test_unknown_keys_are_refused(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text("[serving]\nhttp_prot = 9000\n")
    with pytest.raises(ValueError, match="unknown ServingConfig option.*http_prot"):
        load_config(f)
    with pytest.raises(ValueError, match="unknown preset"):
        load_config(defaults="nope")


def test_config_hash_is_stable_and_sensitive():
    a, b = MegaclassConfig(), load_config(overrides={"train": {"epochs": 99}})
    assert config_hash(a) == config_hash(MegaclassConfig())
    assert config_hash(a.train) != config_hash(b.train)
    assert config_hash(a.glyphs) == config_hash(b.glyphs)


def test_request_limits_are_one_table_of_the_config(tmp_path):
    """Every request limit (front and models) is set in `[serving.limits]`."""
    path = tmp_path / "c.toml"
    path.write_text("[serving.limits]\nmax_top_k = 7\nmax_batch = 64\nmax_image_pixels = 1000000\n")
    limits = load_config(path).serving.limits
    assert (limits.max_top_k, limits.max_batch, limits.max_image_pixels) == (7, 64, 1000000)
    assert load_config().serving.limits.max_request_bytes == 16 * 1024 * 1024
