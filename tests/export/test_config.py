"""The typed configuration: presets, TOML files, overrides, unknown keys, hashing."""

from __future__ import annotations

import pytest

from megaclass.export.config import PRESETS, MegaclassConfig, config_hash, load_config


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


def test_deprecated_limit_options_are_read_at_their_new_place(tmp_path, caplog):
    """`[serving] max_top_k` (before RequestLimits held it) and `[serving.limits] max_bytes_element`
    (now `max_image_bytes`) keep working, with a warning naming the new option."""
    path = tmp_path / "old.toml"
    path.write_text("[serving]\nmax_top_k = 9\ndefault_top_k = 3\n[serving.limits]\nmax_bytes_element = 4096\n")
    with caplog.at_level("WARNING", logger="megaclass.export.config"):
        serving = load_config(path).serving
    assert (serving.limits.max_top_k, serving.limits.max_image_bytes, serving.default_top_k) == (9, 4096, 3)
    assert "serving.max_top_k is deprecated, read as serving.limits.max_top_k = 9" in caplog.text
    assert "serving.limits.max_image_bytes = 4096" in caplog.text
    assert load_config(overrides={"serving": {"max_top_k": 11}}).serving.limits.max_top_k == 11
    same = tmp_path / "same.toml"
    same.write_text("[serving]\nmax_top_k = 9\n[serving.limits]\nmax_top_k = 9\n")
    assert load_config(same).serving.limits.max_top_k == 9
    both = tmp_path / "both.toml"
    both.write_text("[serving]\nmax_top_k = 9\n[serving.limits]\nmax_top_k = 20\n")
    with pytest.raises(ValueError, match="disagrees with serving.limits.max_top_k = 20"):
        load_config(both)
    assert PRESETS["default"] == {} and load_config().serving.limits.max_top_k == 100
