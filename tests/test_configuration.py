"""Configs: every field overridable by flag; unknown keys and bad values fail naming the key."""

import pathlib
import subprocess
import sys

import pytest
from absl import flags

from memagent_jax.model.config import get_preset
from memagent_jax.run import configuration

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.py")


def _parse(*overrides):
    argv = ["prog", f"--config={QUICKSTART}", *overrides]
    flag_values = flags.FlagValues()
    holder = configuration.define_config_flag(flag_values=flag_values, sys_argv=argv)
    configuration.parse_flags(argv, flag_values=flag_values)
    return holder.value


def test_quickstart_builds_the_tiny_preset_with_its_tokenizers_vocabulary():
    config = _parse()
    assert configuration.build_model_config(config.model) == get_preset("tiny", vocab_size=config.tokenizer.vocab_size)
    assert configuration.mesh_shape(config.mesh) == {"data": 1, "fsdp": -1, "tensor": 1}
    assert dict(configuration.build_rules(config.sharding))["embed"] == "fsdp"


def test_any_field_overrides_from_the_command_line():
    config = _parse("--config.model.num_layers=2", "--config.model.dtype=bfloat16", "--config.mesh.tensor=2",
                    "--config.sharding.rules=(('embed', None), ('batch', 'data'))",
                    "--config.generate.prompt=hello world")
    model = configuration.build_model_config(config.model)
    assert (model.num_layers, model.dtype) == (2, "bfloat16")
    assert config.mesh.tensor == 2 and config.generate.prompt == "hello world"
    assert configuration.build_rules(config.sharding) == (("embed", None), ("batch", "data"))


def test_data_sources_override_from_the_command_line():
    config = _parse("--config.rl.sources=({'path': 'data/train-*.parquet', 'weight': 3}, "
                    "{'task': 'niah_single', 'lengths': (1024, 2048), 'weight': 1})")
    assert config.rl.sources == ({"path": "data/train-*.parquet", "weight": 3},
                                 {"task": "niah_single", "lengths": (1024, 2048), "weight": 1})
    assert config.sft.sources == () and config.retrieval.sources == ()  # tasks x lengths, as before


def test_unknown_key_names_the_key():
    with pytest.raises(configuration.ConfigError, match="unknown config key 'model.num_layerz'.*num_layers"):
        _parse("--config.model.num_layerz=4")
    with pytest.raises(configuration.ConfigError, match="unknown config key 'modle.num_layers'"):
        _parse("--config.modle.num_layers=4")


def test_wrong_type_names_the_key():
    with pytest.raises(configuration.ConfigError, match="config.model.num_layers=four"):
        _parse("--config.model.num_layers=four")
    with pytest.raises(configuration.ConfigError, match="config.model.qkv_bias"):
        _parse("--config.model.qkv_bias=maybe")


def test_semantic_errors_name_the_field():
    config = _parse("--config.model.num_heads=3")
    with pytest.raises(configuration.ConfigError, match="config.model: .*num_heads=3"):
        configuration.build_model_config(config.model)
    config = _parse("--config.sharding.rules=(('embed', 'model'),)")
    with pytest.raises(configuration.ConfigError, match="config.sharding.rules: .*'model'"):
        configuration.build_rules(config.sharding)


def test_a_decaying_schedule_spans_its_phase_unless_told_otherwise():
    from memagent_jax.rl.optimizer import learning_rate_schedule
    from memagent_jax.run.settings import optimizer_config

    config = _parse("--config.sft.steps=40", "--config.sft.optimizer.schedule=cosine",
                    "--config.sft.optimizer.end_lr_fraction=0.1")
    sft = optimizer_config(config.sft, "sft")
    assert (sft.schedule, sft.total_steps) == ("cosine", 40)
    lr = learning_rate_schedule(sft)
    assert lr(20) == pytest.approx(3e-3) and lr(40) == pytest.approx(3e-4, rel=1e-3)  # warm-up, then down to 10%
    config = _parse("--config.sft.optimizer.schedule=cosine", "--config.sft.optimizer.total_steps=500",
                    "--config.rl.optimizer.schedule=linear")
    assert optimizer_config(config.sft, "sft").total_steps == 500  # an explicit horizon is kept
    assert optimizer_config(config.rl, "rl").total_steps == max(config.rl.steps, 3)
    assert optimizer_config(config.copy, "copy").schedule == "constant"


def test_rope_scaling_section_round_trips():
    section = configuration.model_section("llama3-8b", dtype="float32", param_dtype="float32")
    assert configuration.build_model_config(section) == get_preset("llama3-8b", dtype="float32",
                                                                   param_dtype="float32")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "memagent_jax.generate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_demo_command_runs_and_rejects_bad_flags(tmp_path):
    done = _run(f"--config={QUICKSTART}", f"--config.workdir={tmp_path}", "--config.generate.max_new_tokens=4",
                "--config.model.num_layers=1", "--config.tokenizer.corpus_lines=600")
    assert done.returncode == 0, done.stderr
    assert "completion (4 tokens)" in done.stdout or "completion (" in done.stdout
    assert (tmp_path / "tokenizer" / "tokenizer.model").is_file()
    bad = _run(f"--config={QUICKSTART}", "--config.model.hidden_sise=8")
    assert bad.returncode != 0 and "unknown config key 'model.hidden_sise'" in bad.stderr
    bad = _run(f"--config={QUICKSTART}", f"--config.workdir={tmp_path}", "--config.model.num_kv_heads=3")
    assert bad.returncode != 0 and "num_kv_heads=3" in bad.stderr.splitlines()[-1]
    bad = _run(f"--config={QUICKSTART}", f"--config.workdir={tmp_path / 'digits'}", "--config.tokenizer.digit_group=4")
    assert bad.returncode != 0 and "config.tokenizer: digit_group must be 1, 2 or 3" in bad.stderr


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _hf_checkpoint_folder(folder: pathlib.Path) -> None:
    """A tiny Qwen2 checkpoint in HF format, with a BPE tokenizer.json and a ChatML template."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from reference_libraries import torch_and_transformers

    torch, transformers = torch_and_transformers()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["What is the special magic number for jittery-hospital?", "The grass is green. 1234567"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": CHATML}))
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, tie_word_embeddings=True, rope_theta=10000.0,
                                      initializer_range=0.5)  # large weights: varied, telling output
    transformers.Qwen2ForCausalLM(config).eval().save_pretrained(folder)
    return transformers.Qwen2ForCausalLM.from_pretrained(folder).eval()


def test_demo_command_on_an_hf_checkpoint_matches_transformers(tmp_path):
    from reference_libraries import torch_and_transformers

    torch, _ = torch_and_transformers()

    from memagent_jax.tokenizer import load_tokenizer

    reference = _hf_checkpoint_folder(tmp_path)
    prompt = "What is the special magic number?"
    done = _run(f"--config={QUICKSTART}", f"--config.model.checkpoint={tmp_path}",
                f"--config.tokenizer.path={tmp_path}", f"--config.workdir={tmp_path / 'run'}",
                f"--config.generate.prompt={prompt}", "--config.generate.max_new_tokens=6")
    assert done.returncode == 0, done.stderr
    tokenizer = load_tokenizer(tmp_path)
    ids = tokenizer.encode_chat([{"role": "user", "content": prompt}])
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                 eos_token_id=list(tokenizer.stop_ids), pad_token_id=tokenizer.pad_id)
    expected = tokenizer.decode(out[0, len(ids):].tolist())
    assert f"completion ({out.shape[1] - len(ids)} tokens): {expected!r}" in done.stdout


def test_retrieval_answer_prompt_fraction_is_checked():
    from memagent_jax.run.settings import retrieval_settings

    assert _parse().retrieval.answer_prompt_fraction == 0.0  # the quickstart's warm-up as before
    retrieval_settings(_parse("--config.retrieval.answer_prompt_fraction=0.5"))
    with pytest.raises(configuration.ConfigError, match="config.retrieval.answer_prompt_fraction"):
        retrieval_settings(_parse("--config.retrieval.answer_prompt_fraction=1.5"))
    config = _parse()
    config.retrieval.unlock()
    config.retrieval.question_first = None
    with pytest.raises(configuration.ConfigError, match="config.retrieval.question_first must be True or False"):
        retrieval_settings(config)
