"""Named synthetic tasks (RULER-style presets) and a one-call constructor."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from memagent_jax.data.document import TextTokenizer
from memagent_jax.data.multihop import MultiHopTask
from memagent_jax.data.niah import NeedleTask
from memagent_jax.data.synthetic import SyntheticTask
from memagent_jax.data.toy import CodeTask
from memagent_jax.data.vt import VariableTrackingTask

__all__ = ["TASKS", "make_task"]

TASKS: dict[str, Callable[..., SyntheticTask]] = {
    # RULER's niah_single_1: one needle in the noise haystack (the repeated filler line).
    "niah_single": functools.partial(NeedleTask),
    # RULER's niah_multikey_2: one needle in a haystack of distractor needles with other keys.
    "niah_multikey": functools.partial(NeedleTask, haystack="needle"),
    # RULER's niah_multikey_3: the same with UUID keys and values.
    "niah_multikey_uuids": functools.partial(NeedleTask, haystack="needle", key_kind="uuids", value_kind="uuids"),
    # RULER's niah_multikey_1, niah_multivalue and niah_multiquery, on the noise haystack (RULER puts them in
    # Paul Graham's essays, which we cannot ship): 4 keys with 1 asked, 4 values of one key, 4 keys all asked.
    "niah_multikey_noise": functools.partial(NeedleTask, num_keys=4),
    "niah_multivalue": functools.partial(NeedleTask, num_values=4),
    "niah_multiquery": functools.partial(NeedleTask, num_keys=4, num_queries=4),
    # Harder variant: 4 keys, 1 asked, in a haystack of distractor needles.
    "niah_multikey_needles": functools.partial(NeedleTask, num_keys=4, haystack="needle"),
    "niah_single_words": functools.partial(NeedleTask, value_kind="words"),
    # Toy: one needle whose value is a single digit (RL from a weak policy gets a 10% chance signal).
    "niah_single_digit": functools.partial(NeedleTask, value_kind="digits"),
    # RULER's vt: 1 chain of 4 hops after a worked example; vt_plain leaves the example out (short documents).
    "vt": functools.partial(VariableTrackingTask),
    "vt_plain": functools.partial(VariableTrackingTask, one_shot_tokens=0),
    "vt_distractors": functools.partial(VariableTrackingTask, num_chains=2),
    "multihop_qa": functools.partial(MultiHopTask),
    # Toy for learning tests: a repeated "The code is D." line, asked for D.
    "toy_code": functools.partial(CodeTask),
}


def make_task(name: str, tokenizer: TextTokenizer, target_tokens: int, **kwargs: Any) -> SyntheticTask:
    """The preset ``name`` (see TASKS) with documents of about ``target_tokens`` tokens; its RNG is
    seeded by the preset name, so ``make_task("vt", ...)`` and ``VariableTrackingTask(...)`` differ."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    kwargs.setdefault("name", name)
    return TASKS[name](tokenizer, target_tokens, **kwargs)
