"""What the transform remembers between events: loyalty programs and their tier names.

Tier events carry tier *numbers*; names come from ``loyaltyProgramDetails.tiers``, which can be null
on later events, so the last list seen per program is kept. Programs are few per org, so the cache
is a plain dict with a size bound (oldest program forgotten first) rather than an LRU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connector.transform.values import boolean, id_str, int_or_none, text

MAX_PROGRAMS = 10_000


@dataclass(slots=True)
class Program:
    name: str | None = None
    is_default: bool | None = None
    tiers: dict[int, str] = field(default_factory=dict)
    tiers_source: Any = None  # the last ``tiers`` list parsed: an equal list is not parsed again


class ProgramCache:
    def __init__(self, max_programs: int = MAX_PROGRAMS) -> None:
        self._programs: dict[str, Program] = {}
        self._max = max_programs

    def observe(self, program_id: str | None, details: Any) -> Program | None:
        """Record what ``loyaltyProgramDetails`` says about a program; return what is known of it."""
        if isinstance(details, dict):
            program_id = program_id or id_str(details.get("id"))
        if program_id is None:
            return None
        program = self._programs.get(program_id)
        if program is None:
            if not isinstance(details, dict):
                return None
            if len(self._programs) >= self._max:
                del self._programs[next(iter(self._programs))]
            program = self._programs[program_id] = Program()
        if isinstance(details, dict):
            name = text(details.get("name"))
            if name is not None:
                program.name = name
            is_default = boolean(details.get("isDefault"))
            if is_default is not None:
                program.is_default = is_default
            tiers = details.get("tiers")
            if type(tiers) is list and tiers and tiers != program.tiers_source:
                names = {}
                for tier in tiers:
                    if isinstance(tier, dict):
                        number = int_or_none(tier.get("tierNumber"))
                        tier_name = text(tier.get("tierName"))
                        if number is not None and tier_name is not None:
                            names[number] = tier_name
                if names:
                    program.tiers = names
                    program.tiers_source = tiers
        return program

    def get(self, program_id: str | None) -> Program | None:
        return self._programs.get(program_id) if program_id is not None else None

    def __len__(self) -> int:
        return len(self._programs)
