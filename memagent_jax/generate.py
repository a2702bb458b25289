"""Demo entry point: build (or load) a model and a tokenizer from a config and generate from a prompt.

    python -m memagent_jax.generate --config=configs/quickstart.py [--config.generate.prompt="..."]
"""

from __future__ import annotations

import pathlib
import time

from absl import logging

from memagent_jax.run import configuration
from memagent_jax.run.builders import build_model, build_tokenizer

_CONFIG = configuration.define_config_flag()


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    workdir = pathlib.Path(config.workdir)
    started = time.perf_counter()
    tokenizer = build_tokenizer(config, workdir)
    model, mesh = build_model(config)
    logging.info("model %s on mesh %s (%.1fs)", model.cfg.family, dict(mesh.shape), time.perf_counter() - started)

    from memagent_jax.model.greedy import greedy_generate

    messages = [{"role": "user", "content": config.generate.prompt}]
    prompt = tokenizer.encode_chat(messages, add_generation_prompt=True)
    [completion] = greedy_generate(model, [prompt], config.generate.max_new_tokens, tokenizer.stop_ids,
                                   pad_id=tokenizer.pad_id)
    print(f"prompt ({len(prompt)} tokens): {config.generate.prompt}")
    print(f"completion ({len(completion)} tokens): {tokenizer.decode(completion)!r}")
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    configuration.run_main(main)
