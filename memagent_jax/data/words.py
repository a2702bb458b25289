"""Word lists and name makers for the synthetic tasks (our own lists; no external word source).

Keys are adjective-noun pairs as in RULER (``jittery-hospital``). Needle *values* of kind "words" come
from a separate list, so a value never occurs inside a key and cannot be guessed from the question.
"""

from __future__ import annotations

import string

import numpy as np

from memagent_jax.data.corpus import _ADJECTIVES, _NOUNS

ADJECTIVES: tuple[str, ...] = _ADJECTIVES + tuple(
    """
    ancient angry arctic autumn bitter blazing brisk broken candid cheerful chilly clever cloudy
    cosmic crimson curious daring dusty elegant empty faint fancy fearless fierce fragile frozen
    giant glossy golden graceful grumpy hollow humble hungry icy jolly keen lazy lively lonely
    lucky mellow merry misty modest narrow nervous noble odd pale patient polite proud rare restless
    rough rusty shiny shy sleepy smooth sour spicy steady sticky stormy sturdy sunny swift tender
    tidy tiny vivid wild windy wise witty young zealous
    """.split()
)
NOUNS: tuple[str, ...] = _NOUNS + tuple(
    """
    anchor apple arrow badge balcony bakery basket beacon bicycle blanket bridge bucket cabin camera
    candle canyon carpet cellar chapel cherry circus cliff compass cottage crystal curtain desert
    dragon drum falcon fountain galaxy glacier guitar hammer helmet island jacket kettle ladder
    lantern library lighthouse magnet meadow museum needle orchard palace parrot pencil pepper
    pillow planet pocket pyramid quarry rabbit ribbon rocket saddle satellite scarf shelter shovel
    signal spider statue stream summit teapot temple theater thunder ticket tower tunnel valley
    violin volcano wagon whistle
    """.split()
)
# Values of kind "words": no overlap with ADJECTIVES or NOUNS.
VALUE_WORDS: tuple[str, ...] = tuple(
    """
    absorb adjust admire anchovy apricot arrange avocado bamboo banjo barley basil biscuit blossom
    borrow breeze broccoli butter cactus caramel carrot cashew celery chase cinnamon clarinet clover
    coconut collect cricket cucumber dandelion deliver donkey eggplant embrace explore fennel fig
    flamingo flute gather ginger giraffe gorilla grape harmony hazelnut hedgehog honey iguana imagine
    jasmine juggle kangaroo kiwi koala lemon lettuce lobster mango maple marble melon mint mushroom
    nectar nutmeg oatmeal octopus olive onion oyster panda papaya peanut pelican penguin pistachio
    plum pretzel pumpkin quartz radish raisin raspberry saffron salmon sesame spinach squirrel
    strawberry tangerine thistle tomato tulip turnip vanilla walnut walrus wander yogurt zebra
    """.split()
)
assert not set(VALUE_WORDS) & (set(ADJECTIVES) | set(NOUNS)), "value words must not occur in keys"

_CONSONANTS = "bcdfghklmnprstvz"
_VOWELS = "aeiou"
UPPER = np.array(list(string.ascii_uppercase))


def key_from_ints(a: int, n: int) -> str:
    """The adjective-noun key number (a, n), indices taken modulo the list sizes."""
    return f"{ADJECTIVES[a % len(ADJECTIVES)]}-{NOUNS[n % len(NOUNS)]}"


def num_keys() -> int:
    return len(ADJECTIVES) * len(NOUNS)


def key_by_number(k: int) -> str:
    return key_from_ints(k // len(NOUNS), k % len(NOUNS))


def made_up_word(ints: "np.ndarray", capitalize: bool = True) -> str:
    """A pronounceable made-up word from small non-negative ints: one consonant-vowel syllable per two
    ints (so len(ints) should be even), e.g. 'Talorvi'."""
    chars = []
    for i in range(0, len(ints) - 1, 2):
        chars.append(_CONSONANTS[int(ints[i]) % len(_CONSONANTS)])
        chars.append(_VOWELS[int(ints[i + 1]) % len(_VOWELS)])
    word = "".join(chars)
    return word.capitalize() if capitalize else word
