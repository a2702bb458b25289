"""Named synthetic tasks (RULER-style presets) and a one-call constructor."""

from __future__ import annotations

import functools
from collections.abc import Callable

from memagent_jax.data.document import TextTokenizer
from memagent_jax.data.multihop import MultiHopTask
from memagent_jax.data.niah import NeedleTask
from memagent_jax.data.synthetic import SyntheticTask
from memagent_jax.data.toy import CodeTask
from memagent_jax.data.vt import VariableTrackingTask

__all__ = ["TASKS", "make_task"]

TASKS: dict[str, Callable[..., SyntheticTask]] = {
    # Noise haystack (the repeated filler line).
    "niah_single": functools.partial(NeedleTask),
    "niah_multikey": functools.partial(NeedleTask, num_keys=4),
    "niah_multivalue": functools.partial(NeedleTask, num_values=4),
    "niah_multiquery": functools.partial(NeedleTask, num_keys=4, num_queries=4),
    # Distractor-needle haystack: every filler line is a needle with another key.
    "niah_single_needles": functools.partial(NeedleTask, haystack="needle"),
    "niah_multikey_needles": functools.partial(NeedleTask, num_keys=4, haystack="needle"),
    "niah_multikey_uuids": functools.partial(NeedleTask, num_keys=4, haystack="needle", value_kind="uuids"),
    "niah_single_words": functools.partial(NeedleTask, value_kind="words"),
    # Toy: one needle whose value is a single digit (RL from a weak policy gets a 10% chance signal).
    "niah_single_digit": functools.partial(NeedleTask, value_kind="digits"),
    "vt": functools.partial(VariableTrackingTask),
    "vt_distractors": functools.partial(VariableTrackingTask, num_chains=2),
    "multihop_qa": functools.partial(MultiHopTask),
    # Toy for learning tests: a repeated "The code is D." line, asked for D.
    "toy_code": functools.partial(CodeTask),
}


def make_task(name: str, tokenizer: TextTokenizer, target_tokens: int, **kwargs) -> SyntheticTask:
    """The preset ``name`` (see TASKS) with documents of about ``target_tokens`` tokens; its RNG is
    seeded by the preset name, so ``make_task("vt", ...)`` and ``VariableTrackingTask(...)`` differ."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    kwargs.setdefault("name", name)
    return TASKS[name](tokenizer, target_tokens, **kwargs)
