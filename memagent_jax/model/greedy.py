"""Greedy decoding by recomputing the full forward for every new token.

Slow (quadratic) but obviously correct: it is the reference the paged-KV engine is checked against, and
the generator of the foundation's demo command.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memagent_jax.model.transformer import Transformer


def _bucket(length: int, multiple: int = 64) -> int:
    return -(-length // multiple) * multiple


def greedy_generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
) -> list[list[int]]:
    """Greedy continuations of each prompt (stop token included when hit), one compile per call shape."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    width = _bucket(int(lengths.max()) + max_new_tokens)
    if width > model.cfg.max_position_embeddings:
        raise ValueError(f"prompt + max_new_tokens = {int(lengths.max()) + max_new_tokens} exceeds "
                         f"max_position_embeddings={model.cfg.max_position_embeddings}")
    buffer = np.full((len(prompts), width), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        buffer[row, : len(prompt)] = prompt
    graphdef, state = nnx.split(model)

    @jax.jit
    def next_tokens(state: nnx.State, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        segment_ids = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.int32)
        logits = nnx.merge(graphdef, state)(tokens, segment_ids=segment_ids)
        last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
        return jnp.argmax(last, axis=-1).astype(jnp.int32)

    stops = set(int(s) for s in stop_ids)
    outputs: list[list[int]] = [[] for _ in prompts]
    done = np.zeros(len(prompts), bool)
    for _ in range(max_new_tokens):
        chosen = np.asarray(next_tokens(state, jnp.asarray(buffer), jnp.asarray(lengths)))
        for row in np.flatnonzero(~done):
            token = int(chosen[row])
            outputs[row].append(token)
            buffer[row, lengths[row]] = token
            lengths[row] += 1
            done[row] = token in stops
        if done.all():
            break
    return outputs
