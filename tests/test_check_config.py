"""check_config: a config validated and its memory budget computed for a target, without running it."""

import pathlib

import pytest

from memagent_jax.check_config import summary
from memagent_jax.run.config_error import ConfigError
from memagent_jax.run.configuration import load_config_file

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def test_the_7b_config_on_8_h100s_is_summarised_with_its_budget():
    config = load_config_file(str(CONFIGS / "qwen2_5_7b_gpu8.py"))
    text = summary(config, devices=8, device_gb=80)
    assert "rl 400 steps (batch 128 x group 16" in text
    assert "per-device memory on 8 devices (mesh {'data': 1, 'fsdp': 2, 'tensor': 4})" in text
    assert "kv_cache" in text and "total" in text
    with pytest.raises(ConfigError, match="does not fit in device memory"):
        summary(config, devices=8, device_gb=20)


def test_targets_that_do_not_match_the_mesh_are_refused():
    config = load_config_file(str(CONFIGS / "qwen2_5_7b_gpu8.py"))
    with pytest.raises(ConfigError, match="does not divide 6 devices|needs"):
        summary(config, devices=6, device_gb=80)
    with pytest.raises(ConfigError, match="--device_gb"):
        summary(config, devices=8)
