"""Which versions of a model are served (SEQSERVE_VERSION_POLICY), as Triton's version_policy:
the latest N, specific versions, or all (the default), per model name."""

from __future__ import annotations

import os
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
        # a version is a folder named by a number (``is_version``): "abc" matched none, and the
        # model's configuration, which lists them as numbers, answered 500
        wrong = [v for v in self.specific or [] if not is_version(v)]
        if wrong:
            raise ValueError(f"specific versions are numbers without leading zeros, as their folders are named; "
                             f"got {wrong}")
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
    return sorted(card for card in cards if is_version(card.parent.name))


def readable(folder: Path) -> bool:
    """Whether the server may list ``folder`` and open what is in it."""
    return os.access(folder, os.R_OK | os.X_OK)


def unreadable_folder() -> str:
    """Why a folder of the repository is not read: said with the uid (a volume mounted with another owner)."""
    return f"the folder cannot be read (permissions; the server runs as uid {os.getuid()})"


def is_version(folder: str) -> bool:
    """A version folder's name: a number, without leading zeros ("01" and "1" would be two
    versions that compare equal)."""
    return folder.isdigit() and (folder == "0" or not folder.startswith("0"))


def served_cards(cards: Iterable[Path], policies: dict[str, VersionPolicy]) -> list[Path]:
    """The <name>/<version>/model.json files the policies select, in order."""
    by_model: dict[str, dict[str, Path]] = {}
    for card in cards:
        by_model.setdefault(card.parent.parent.name, {})[card.parent.name] = card
    chosen = [card for name, versions in by_model.items() for version, card in versions.items()
              if name not in policies or version in policies[name].select(versions)]
    return sorted(chosen)


def unserved(repository: Path, policies: dict[str, VersionPolicy]) -> list[str]:
    """What the repository holds but will not serve, or the policies name but it does not hold,
    each as a line for the start-up log: a version folder that is no number, a policy for a model
    that is not there, a specific version that is not there, a model the policy leaves with none.
    Each was silent: a typo in SEQSERVE_VERSION_POLICY dropped a model from a server that then
    reported ready."""
    lines: list[str] = []
    on_disk: dict[str, list[str]] = {}
    for card in sorted(repository.glob("*/*/model.json")):  # one look at the folder, as version_cards takes
        if is_version(card.parent.name):
            on_disk.setdefault(card.parent.parent.name, []).append(card.parent.name)
        else:
            lines.append(f"{card.parent}: not served: a version folder's name must be a number without leading "
                         "zeros (e.g. 1)")
    for model in sorted(repository.glob("*")):  # glob passes over a folder it cannot list, without a word
        if model.is_dir() and not readable(model):
            lines.append(f"{model}: not served: {unreadable_folder()}")
    for folder in sorted(repository.glob("*/*")):  # were ignored without a word
        if not (folder.is_dir() and is_version(folder.name)):
            continue
        if not readable(folder):
            lines.append(f"{folder}: not served: {unreadable_folder()}")
        elif not (folder / "model.json").exists():
            lines.append(f"{folder}: not served: no model.json in it")
    for name, policy in sorted(policies.items()):
        versions = on_disk.get(name)
        if versions is None:
            lines.append(f"SEQSERVE_VERSION_POLICY names model {name!r}, which {repository} does not hold "
                         f"(it holds: {', '.join(sorted(on_disk)) or 'nothing'})")
            continue
        missing = sorted(set(policy.specific or []) - set(versions))
        if missing:
            lines.append(f"SEQSERVE_VERSION_POLICY names version(s) {', '.join(missing)} of {name!r}, which "
                         f"{repository} does not hold (it holds: {', '.join(sorted(versions, key=int))})")
        if not policy.select(versions):
            lines.append(f"model {name!r} is not served: SEQSERVE_VERSION_POLICY selects none of its versions")
    return lines
