"""Per-token log-probabilities and entropies of packed rows under a model.

The LM head runs over pieces of the sequence under jax.checkpoint: at a 152K vocabulary the full
[rows, T, vocab] float32 logits of one micro-batch would outweigh the model, so each piece's logits are
made, reduced to two numbers per token, and recomputed in the backward pass instead of stored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memagent_jax.model.transformer import Transformer
from memagent_jax.rl.grpo import token_logprobs_and_entropy


def _piece_stats(model: Transformer, hidden: jax.Array, targets: jax.Array,
                 temperature: float) -> tuple[jax.Array, jax.Array]:
    return token_logprobs_and_entropy(model.logits(hidden), targets, temperature)


def token_stats(model: Transformer, batch: dict[str, jax.Array], temperature: float = 1.0,
                piece_len: int = 256, remat: bool = False, scan: bool = False) -> tuple[jax.Array, jax.Array]:
    """(log p(target | prefix), entropy of the next-token distribution), both [rows, T] float32, with the
    logits divided by `temperature` (the sampler's, so ratios compare like with like).

    scan: the decoder layers run as one lax.scan (Transformer.hidden_states), and when the row splits into
    whole pieces the LM-head pieces too, so the program holds one layer and one piece however long the row."""
    hidden = model.hidden_states(batch["tokens"], segment_ids=batch["segment_ids"], positions=batch["positions"],
                                 remat=remat, scan=scan)
    targets = batch["targets"]
    rows, length = targets.shape
    stats = jax.checkpoint(_piece_stats, static_argnums=(3,))
    pieces = length // piece_len
    if scan and pieces > 1 and length % piece_len == 0:
        # [rows, T, ...] -> [pieces, rows, piece_len, ...]; lax.map runs the pieces in order.
        hidden_pieces = hidden.reshape(rows, pieces, piece_len, -1).swapaxes(0, 1)
        target_pieces = targets.reshape(rows, pieces, piece_len).swapaxes(0, 1)
        logp, entropy = jax.lax.map(lambda piece: stats(model, *piece, temperature), (hidden_pieces, target_pieces))
        return logp.swapaxes(0, 1).reshape(rows, length), entropy.swapaxes(0, 1).reshape(rows, length)
    logps, entropies = [], []
    for start in range(0, length, piece_len):
        piece = slice(start, min(start + piece_len, length))
        logp, entropy = stats(model, hidden[:, piece], targets[:, piece], temperature)
        logps.append(logp)
        entropies.append(entropy)
    return jnp.concatenate(logps, axis=1), jnp.concatenate(entropies, axis=1)
