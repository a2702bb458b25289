"""Test session setup: 8 fake CPU devices (sharding tests) and no network access to model hubs."""

import os

# Must happen before jax initialises its backends, i.e. before any test module imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
