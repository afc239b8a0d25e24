"""Which versions of a model are served (SEQSERVE_VERSION_POLICY), as Triton's version_policy:
the latest N, specific versions, or all (the default), per model name."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VersionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latest: int | None = Field(None, ge=1, description="serve the N highest versions")
    specific: list[str] | None = Field(None, min_length=1, description="serve these versions")

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        if self.latest is not None and self.specific is not None:
            raise ValueError("give 'latest' or 'specific', not both")
        return self

    def select(self, versions: Iterable[str]) -> set[str]:
        ordered = sorted(versions, key=int)
        if self.latest is not None:
            return set(ordered[-self.latest:])
        if self.specific is not None:
            return set(ordered) & set(self.specific)
        return set(ordered)

    def config(self) -> dict[str, Any]:
        """Triton's JSON form (model configuration's version_policy)."""
        if self.latest is not None:
            return {"latest": {"num_versions": self.latest}}
        if self.specific is not None:
            return {"specific": {"versions": [int(v) for v in self.specific]}}
        return {"all": {}}



def version_cards(repository: Path, name: str | None = None) -> list[Path]:
    """The <name>/<version>/model.json files under the repository (a version is a number), of one
    model or of all."""
    # the name is a path, never part of the pattern: "*" must not match every model
    cards = (repository / name).glob("*/model.json") if name else repository.glob("*/*/model.json")
    return sorted(card for card in cards if card.parent.name.isdigit())


def served_cards(cards: Iterable[Path], policies: dict[str, VersionPolicy]) -> list[Path]:
    """The <name>/<version>/model.json files the policies select, in order."""
    by_model: dict[str, dict[str, Path]] = {}
    for card in cards:
        by_model.setdefault(card.parent.parent.name, {})[card.parent.name] = card
    chosen = [card for name, versions in by_model.items() for version, card in versions.items()
              if name not in policies or version in policies[name].select(versions)]
    return sorted(chosen)
