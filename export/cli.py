"""How the export/ commands end on a user's mistake: one line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from export.data import DataNotFound
from service.model_card import ModelCardError


def run(main: Callable[[], None]) -> None:
    """Run a command's ``main``. A --data-dir without the data, a --model-dir without a readable
    model.json, or a card the service would refuse (their messages say what to pass) ends the
    command with its message and exit status 2; anything else (a missing file deep in training
    included) is a bug and keeps its traceback."""
    try:
        main()
    except (DataNotFound, ModelCardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
