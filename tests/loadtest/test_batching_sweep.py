"""The batching sweep's settings and how the chosen values are written into the configuration file."""

from __future__ import annotations

from megaclass.export.config import load_config
from megaclass.loadtest.batching_sweep import with_setting, write_serving_sections
from megaclass.python_backend.serving.config import ServingConfig


def test_with_setting_sets_both_models_and_the_encoder_instances():
    s = with_setting(ServingConfig(), 1024, 300, 4)
    assert s.encoder.max_batch_size == s.retriever.max_batch_size == 1024
    assert s.encoder.preferred_batch_sizes == (256, 512, 1024) and s.retriever.max_queue_delay_us == 300
    assert (s.encoder.instances, s.retriever.instances) == (4, 1)
    assert with_setting(ServingConfig(), 2, 0, 1).encoder.preferred_batch_sizes == (1, 2)


def test_chosen_values_replace_their_tables_and_keep_the_rest(tmp_path):
    path = tmp_path / "megaclass.toml"
    path.write_text('[train]\nepochs = 3\n\n[serving.encoder]\nmax_batch_size = 7\n\n[serving]\ntarget = "gpu-torch"\n')
    for batch in (512, 256):  # twice: the second run replaces the first one's tables
        write_serving_sections(path, with_setting(ServingConfig(), batch, 250, 2), note="chosen by a test")
    cfg = load_config(path)
    assert cfg.train.epochs == 3 and cfg.serving.target == "gpu-torch"
    assert cfg.serving.encoder.max_batch_size == 256 and cfg.serving.encoder.instances == 2
    assert cfg.serving.retriever.preferred_batch_sizes == (64, 128, 256)
    assert path.read_text().count("[serving.encoder]") == 1
    write_serving_sections(tmp_path / "new.toml", ServingConfig())
    assert load_config(tmp_path / "new.toml").serving == ServingConfig()
