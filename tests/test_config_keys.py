"""Strict configs: a key no part of the run reads, or one it needs and the file lacks, stops every command that
loads the file, naming the full key; unset optional values are ml_collections placeholders, still overridable."""

import pathlib
import subprocess
import sys

import pytest
from absl import flags

from memagent_jax.run import configuration
from memagent_jax.run.config_keys import check_run_keys
from memagent_jax.run.settings import loss_config, optimizer_config, run_settings

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.py"


def _config_file(tmp_path: pathlib.Path, *edits: str) -> str:
    """A config file that is the quickstart with `edits` (Python lines on `config`) applied."""
    body = "\n".join(f"    {line}" for line in edits)
    path = tmp_path / "edited_config.py"
    path.write_text("import runpy\n\nfrom ml_collections.config_dict import placeholder\n\n\n"
                    f"def get_config():\n    config = runpy.run_path({str(QUICKSTART)!r})['get_config']()\n"
                    f"{body}\n    return config\n")
    return str(path)


def _parse(path: str, *overrides: str):
    """What `python -m memagent_jax.train` does with its argv (configuration.run_main's flags parser)."""
    argv = ["train", f"--config={path}", *overrides]
    flag_values = flags.FlagValues()
    holder = configuration.define_config_flag(flag_values=flag_values, sys_argv=argv)
    configuration.parse_flags(argv, flag_values=flag_values)
    return holder.value


@pytest.mark.parametrize("edit, message", [
    ("config.batchsize = 8", r"config\.batchsize is not a known key"),  # top level
    ("config.checkpoint.evry = 5", r"config\.checkpoint\.evry is not a known key; did you mean config\.checkpoint\.ev"),
    ("config.rl.batchsize = 8", r"config\.rl\.batchsize is not a known key; did you mean config\.rl\.batch_size\?"),
    ("config.rl.loss.dual_clp = 2.0", r"config\.rl\.loss\.dual_clp .*did you mean config\.rl\.loss\.dual_clip\?"),
    ("config.agent.chunk_sise = 64", r"config\.agent\.chunk_sise .*did you mean config\.agent\.chunk_size\?"),
    ("config.agent.seed = 3", r"config\.agent\.seed is not a known key"),  # the agent's seed is config.seed
    ("config.model.preset = 'tiny'", r"config\.model\.preset is not a known key"),
])
def test_a_misspelt_key_in_the_file_stops_the_command_naming_it(tmp_path, edit, message):
    with pytest.raises(configuration.ConfigError, match=message):
        _parse(_config_file(tmp_path, edit))


def test_a_missing_key_and_a_value_in_place_of_a_section_are_named(tmp_path):
    with pytest.raises(configuration.ConfigError, match=r"config\.eval\.on_bad_record is missing"):
        _parse(_config_file(tmp_path, "del config.eval.on_bad_record"))
    with pytest.raises(configuration.ConfigError, match=r"config\.rl\.loss must be a section"):
        _parse(_config_file(tmp_path, "del config.rl.loss", "config.rl.loss = 3"))


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(configuration.ConfigError) as raised:
        configuration.load_config_file(_config_file(tmp_path, "config.rl.batchsize = 8", "config.sft.setps = 2"))
    assert "config.rl.batchsize" in str(raised.value) and "config.sft.setps" in str(raised.value)


def test_the_train_command_refuses_a_typo_in_its_file_before_building_anything(tmp_path):
    done = subprocess.run([sys.executable, "-m", "memagent_jax.train",
                           f"--config={_config_file(tmp_path, 'config.rl.batchsize = 8')}",
                           f"--config.workdir={tmp_path / 'run'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "config.rl.batchsize is not a known key; did you mean config.rl.batch_size?" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_config_built_in_code_is_checked_before_its_settings():
    config = configuration.load_config_file(str(QUICKSTART))
    config.sft.quiet_update = 2
    with pytest.raises(configuration.ConfigError, match=r"config\.sft\.quiet_update .*config\.sft\.quiet_updates"):
        run_settings(config)
    del config.sft.quiet_update
    check_run_keys(config)  # the quickstart itself is clean


def test_unset_placeholders_keep_their_type_for_command_line_overrides(tmp_path):
    config = _parse(str(QUICKSTART))
    assert config.budget.device_gb is None and config.sft.optimizer.total_steps is None
    assert configuration.build_model_config(config.model).rope_scaling is None
    config = _parse(str(QUICKSTART), "--config.budget.device_gb=80", "--config.sft.optimizer.total_steps=500",
                    "--config.sft.optimizer.schedule=cosine", "--config.model.rope_scaling.factor=8.0")
    assert config.budget.device_gb == 80.0
    assert optimizer_config(config.sft, "sft").total_steps == 500
    scaling = configuration.build_model_config(config.model).rope_scaling
    assert (scaling.factor, scaling.original_max_position_embeddings) == (8.0, 8192)  # the rest: Llama 3's


def test_loss_clips_off_as_placeholders_and_on_from_the_command_line(tmp_path):
    path = _config_file(tmp_path, "config.rl.loss.dual_clip = placeholder(float)",
                        "config.rl.loss.tis_cap = placeholder(float)")
    loss = loss_config(_parse(path).rl)
    assert (loss.dual_clip, loss.tis_cap) == (None, None)
    loss = loss_config(_parse(path, "--config.rl.loss.dual_clip=3.0", "--config.rl.loss.tis_cap=2").rl)
    assert (loss.dual_clip, loss.tis_cap) == (3.0, 2.0)


def test_zero_is_no_longer_off_for_the_clips(tmp_path):
    config = _parse(str(QUICKSTART), "--config.rl.loss.dual_clip=0")
    with pytest.raises(configuration.ConfigError, match=r"config\.rl\.loss: .*dual_clip"):
        loss_config(config.rl)


def test_rope_scaling_fields_without_a_factor_are_refused():
    config = _parse(str(QUICKSTART), "--config.model.rope_scaling.low_freq_factor=2.0")
    with pytest.raises(configuration.ConfigError, match=r"rope_scaling: \['low_freq_factor'\] set but factor is not"):
        configuration.build_model_config(config.model)
