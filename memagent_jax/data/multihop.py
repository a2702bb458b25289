"""Synthetic multi-hop QA in the shape of HotpotQA (bridge questions over made-up entities).

Two gold paragraphs hold one fact each; the answer needs both (e.g. person -> birth city -> country).
They sit at random positions among distractor paragraphs about other made-up entities, written like
MemAgent's contexts: ``Document {i}:\\n{title}\\n{text}`` separated by blank lines. Distractors never
share a title with a gold paragraph, so they cannot contradict the gold facts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from memagent_jax.data.document import Sample, Span, TextTokenizer
from memagent_jax.data.haystack import BlockStream, HaystackDocument
from memagent_jax.data.synthetic import SyntheticTask
from memagent_jax.data.words import ADJECTIVES, made_up_word

__all__ = ["MultiHopTask", "ParagraphStream", "QUESTION_TYPES"]

QUESTION_TYPES = ("country", "year", "city")
_CITY_SUFFIX = ("port", "ville", "burg", "ford", "ton", "field", "haven", "mouth")
_COUNTRY_SUFFIX = ("ia", "land", "stan", "ora", "ovia", "istan")
_CITY_KIND = ("city", "town", "port city", "market town", "village")
_PROFESSIONS = ("painter", "engineer", "novelist", "architect", "chemist", "composer", "diplomat", "sculptor")
_GENRES = ("drama", "comedy", "thriller", "western", "musical", "documentary", "science fiction")
_INDUSTRIES = ("shipping", "software", "textile", "mining", "publishing", "aerospace", "food")
_COMPANY_SUFFIX = ("Industries", "Group", "Holdings", "Works", "Company", "Labs")
_WIDTH = 56  # random ints drawn per entity or paragraph


def _person(r: Sequence[int]) -> str:
    return f"{made_up_word(r[0:4])} {made_up_word(r[4:10])}"


def _city(r: Sequence[int], at: int = 10) -> str:
    # at=48: a second city (filming location, headquarters) independent of the first
    return made_up_word(r[at : at + 6]) + _CITY_SUFFIX[r[at + 6] % len(_CITY_SUFFIX)]


def _country(r: Sequence[int]) -> str:
    return made_up_word(r[17:21]) + _COUNTRY_SUFFIX[r[21] % len(_COUNTRY_SUFFIX)]


def _film(r: Sequence[int]) -> str:
    return f"The {ADJECTIVES[r[22] % len(ADJECTIVES)].capitalize()} {made_up_word(r[23:27])}"


def _company(r: Sequence[int]) -> str:
    return f"{made_up_word(r[27:33])} {_COMPANY_SUFFIX[r[33] % len(_COMPANY_SUFFIX)]}"


def _year(r: Sequence[int], k: int) -> int:
    return 1850 + int(r[34 + k] % 150)


def person_paragraph(name: str, year: int, city: str, r: Sequence[int]) -> tuple[str, str]:
    first = name.split()[0]
    return name, f"{name} was born in {year} in {city}. {first} later worked as {_a(_PROFESSIONS[r[40] % 8])}."


def city_paragraph(city: str, country: str, r: Sequence[int]) -> tuple[str, str]:
    kind = _CITY_KIND[r[41] % len(_CITY_KIND)]
    pop = 1000 + int(r[42] % 900_000)
    return city, f"{city} is {_a(kind)} in {country}. It had a population of {pop:,} at the last census."


def film_paragraph(film: str, director: str, r: Sequence[int]) -> tuple[str, str]:
    genre = _GENRES[r[43] % len(_GENRES)]
    return film, f"{film} is a {_year(r, 2)} {genre} film directed by {director}. It was filmed in {_city(r, 48)}."


def company_paragraph(company: str, founder: str, r: Sequence[int]) -> tuple[str, str]:
    industry = _INDUSTRIES[r[44] % len(_INDUSTRIES)]
    return company, (
        f"{company} is {_a(industry)} company founded by {founder} in {_year(r, 3)}. "
        f"Its headquarters are in {_city(r, 48)}."
    )


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _unit(title: str, text: str) -> str:
    return f"{title}\n{text}\n\n"


def _distractor(r: Sequence[int], excluded: frozenset[str]) -> str:
    kind = int(r[45] % 4)
    if kind == 0:
        title, text = person_paragraph(_person(r), _year(r, 0), _city(r), r)
    elif kind == 1:
        title, text = city_paragraph(_city(r), _country(r), r)
    elif kind == 2:
        title, text = film_paragraph(_film(r), _person(r), r)
    else:
        title, text = company_paragraph(_company(r), _person(r), r)
    if title in excluded:  # never contradict a gold paragraph: rename the distractor's subject
        text = text.replace(title, title + "a")
        title = title + "a"
    return _unit(title, text)


@dataclasses.dataclass(frozen=True)
class ParagraphStream(BlockStream):
    """Distractor paragraphs of one sample."""

    seed: int
    task_id: int
    index: int
    excluded: frozenset[str] = frozenset()
    block = 64

    def rng_key(self) -> tuple[int, ...]:
        return (self.seed, self.task_id, self.index, 1)

    def make_block(self, rng: np.random.Generator, n: int) -> list[str]:
        rows = rng.integers(0, 1 << 30, size=(n, _WIDTH))
        return [_distractor(r, self.excluded) for r in rows.tolist()]

    def calibration_stream(self) -> "ParagraphStream":
        return ParagraphStream(0, 0, 0)

    def family(self) -> object:
        return ParagraphStream


class MultiHopTask(SyntheticTask):
    """HotpotQA-shaped bridge questions; ``question_types`` picks among country/year/city."""

    answer_mode = "any"

    def __init__(self, tokenizer: TextTokenizer, target_tokens: int, *,
                 question_types: Sequence[str] = QUESTION_TYPES, **kw: Any):
        bad = set(question_types) - set(QUESTION_TYPES)
        if bad or not question_types:
            raise ValueError(f"question_types must be a non-empty subset of {QUESTION_TYPES}, got {question_types}")
        self.question_types = tuple(question_types)
        super().__init__(tokenizer, target_tokens, **kw)

    def default_name(self) -> str:
        return "multihop_" + "_".join(self.question_types)

    def _gold(self, r: list[int], qtype: str) -> tuple[str, str, list[tuple[str, str]]]:
        """(question, answer, two gold (title, text) paragraphs)."""
        person, city, year = _person(r), _city(r), _year(r, 0)
        if qtype == "country":
            country = _country(r)
            gold = [person_paragraph(person, year, city, r), city_paragraph(city, country, r)]
            return f"In which country was {person} born?", country, gold
        if qtype == "year":
            film = _film(r)
            gold = [film_paragraph(film, person, r), person_paragraph(person, year, city, r)]
            return f"In what year was the director of {film} born?", str(year), gold
        company = _company(r)
        gold = [company_paragraph(company, person, r), person_paragraph(person, year, city, r)]
        return f"In which city was the founder of {company} born?", city, gold

    def sample(self, index: int) -> Sample:
        rng = self.rng(index)
        qtype = self.question_types[int(rng.integers(len(self.question_types)))]
        question, answer, gold = self._gold(rng.integers(0, 1 << 30, size=_WIDTH).tolist(), qtype)
        stream = ParagraphStream(self.seed, self.task_id, index, frozenset(t for t, _ in gold))
        units = [_unit(t, x) for t, x in gold]
        fixed = sum(self.planner.count(u) for u in units)
        n_units, tokens, skip = self.planner.plan(stream, self.target_tokens, fixed, len(units), numbered=True)
        total = n_units + len(units)
        positions = sorted(int(p) for p in rng.choice(total, size=len(units), replace=False))
        order = rng.permutation(len(units)).tolist()  # which gold paragraph comes first
        inserts = tuple((p, units[o]) for p, o in zip(positions, order))
        spans = tuple(Span(p, gold[o][1]) for p, o in zip(positions, order))
        return Sample(
            index=index,
            task=self.name,
            question=question,
            answers=(answer,),
            document=HaystackDocument(stream, n_units, inserts, spans, tokens, numbered=True, skip=skip),
            answer_mode="any",
            meta={
                "target_tokens": self.target_tokens,
                "type": qtype,
                "num_docs": total,
                "gold_docs": tuple(p + 1 for p in positions),
            },
        )
