"""MemAgent's prompt templates (Yu et al., 2025, arXiv:2507.02259; reproduced exactly) and their token-level assembly.

Every prompt is one user message rendered through the tokenizer's chat template. The question, the memory
and the document chunk enter as token ids in slots: chunks and generated memories are never decoded and
re-tokenized. The literal pieces around the slots are tokenized once per tokenizer and cached.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from memagent_jax.tokenizer import Tokenizer

# Note the space after "<problem>": the trained checkpoints expect it.
MEMORY_UPDATE_TEMPLATE = """You are presented with a problem, a section of an article that may contain the answer to the problem, and a previous memory. Please read the provided section carefully and update the memory with the new information that helps to answer the problem. Be sure to retain all relevant details from the previous memory while adding any new, useful information.

<problem> 
{prompt}
</problem>

<memory>
{memory}
</memory>

<section>
{chunk}
</section>

Updated memory:
"""

FINAL_ANSWER_TEMPLATE = """You are presented with a problem and a previous memory. Please answer the problem based on the previous memory and put the answer in \\boxed{{}}.

<problem> 
{prompt}
</problem>

<memory>
{memory}
</memory>

Your answer:
"""

INITIAL_MEMORY = "No previous memory"
# What the SFT oracle memory says before any answer-bearing line has been read (rl/sft.py).
EMPTY_MEMORY = "No relevant information found yet."

# A slot's ids are replaced by one negative marker id while the template is split into pieces.
_MARKER_BASE = -1_000_000


@dataclasses.dataclass(frozen=True)
class SlotPrompt:
    """A chat prompt as literal token pieces with named slots between them: assemble() is a concatenation."""

    pieces: tuple[tuple[int, ...] | str, ...]  # token ids, or a slot name

    @classmethod
    def build(cls, tokenizer: Tokenizer, template: str, slot_names: Sequence[str]) -> "SlotPrompt":
        # Literal braces in the template are written doubled ({{}}); slots are {name}.
        content = template.replace("{{", "\ue010").replace("}}", "\ue011")
        for name in slot_names:
            if "{" + name + "}" not in content:
                raise ValueError(f"template has no slot {{{name}}}")
        content = content.replace("\ue010", "{").replace("\ue011", "}")
        markers = {name: [_MARKER_BASE - i] for i, name in enumerate(slot_names)}
        ids = tokenizer.encode_chat_with_slots([{"role": "user", "content": content}], markers)
        by_marker = {_MARKER_BASE - i: name for i, name in enumerate(slot_names)}
        pieces: list[tuple[int, ...] | str] = []
        literal: list[int] = []
        for token in ids:
            if token in by_marker:
                pieces.append(tuple(literal))
                pieces.append(by_marker[token])
                literal = []
            else:
                literal.append(token)
        pieces.append(tuple(literal))
        return cls(tuple(pieces))

    @property
    def slot_names(self) -> tuple[str, ...]:
        return tuple(p for p in self.pieces if isinstance(p, str))

    def assemble(self, slots: Mapping[str, Sequence[int]]) -> list[int]:
        missing = [name for name in self.slot_names if name not in slots]
        if missing:
            raise ValueError(f"missing slot values: {missing}")
        out: list[int] = []
        for piece in self.pieces:
            out.extend(slots[piece] if isinstance(piece, str) else piece)
        return out

    def fixed_length(self) -> int:
        """Tokens of the template itself, without the slots."""
        return sum(len(p) for p in self.pieces if not isinstance(p, str))


@dataclasses.dataclass(frozen=True)
class AgentPrompts:
    """The two prompts of the workflow for one tokenizer, plus the initial memory's ids."""

    memory_update: SlotPrompt
    final_answer: SlotPrompt
    initial_memory: tuple[int, ...]

    @classmethod
    def build(
        cls,
        tokenizer: Tokenizer,
        memory_template: str = MEMORY_UPDATE_TEMPLATE,
        final_template: str = FINAL_ANSWER_TEMPLATE,
        initial_memory: str = INITIAL_MEMORY,
    ) -> "AgentPrompts":
        return cls(
            SlotPrompt.build(tokenizer, memory_template, ("prompt", "memory", "chunk")),
            SlotPrompt.build(tokenizer, final_template, ("prompt", "memory")),
            tuple(tokenizer.encode(initial_memory)),
        )
