"""memagent_jax: MemAgent memory agents trained with Multi-Conv GRPO, in JAX/Flax NNX."""

from memagent_jax.compat import check_flax_matches_jax

# A flax too old for the installed jax fails deep inside nnx; say so at import, with the fix.
check_flax_matches_jax()
