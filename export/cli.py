"""How the export/ commands end on a user's mistake: one line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from service.model_card import ModelCardError


def run(main: Callable[[], None]) -> None:
    """Run a command's ``main``. A path that is not there (a --data-dir without the data, a
    --model-dir without its model.json: their messages say what to pass) or a model card the
    service would refuse ends the command with its message and exit status 2; anything else is a
    bug and keeps its traceback."""
    try:
        main()
    except (FileNotFoundError, ModelCardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
