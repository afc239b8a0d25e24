"""python -m service: run the API, configured by SEQSERVE_* settings (see the README's table).

One server process (service/server.py), or with SEQSERVE_WORKERS > 1 a supervisor
(service/workers.py) running that many on one port.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from pydantic import ValidationError
from pydantic_settings import SettingsError

from service.logs import configure_logging
from service.server import STARTUP_FAILED, serve
from service.settings import Settings, kubernetes_hint, unknown_variables
from service.workers import Supervisor


def main(argv: list[str] | None = None) -> None:
    # settings are environment variables only: an argument (--port 9999) is refused, not ignored
    argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n\n")[0],
                            epilog="Settings: SEQSERVE_* environment variables (README, Settings), e.g. "
                                   "SEQSERVE_PORT=8000 SEQSERVE_WORKERS=2 python -m service").parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:  # one line per bad setting, named as it is set, not a traceback
        for error in exc.errors():
            name = "SEQSERVE_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"invalid setting {name}: {error['msg']} (got {error.get('input')!r})"
                  f"{kubernetes_hint(error.get('input'))}", file=sys.stderr)
        sys.exit(STARTUP_FAILED)
    except SettingsError as exc:  # a JSON-valued setting that is not JSON (an empty one included)
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"SEQSERVE_{field.group(1).upper()}" if field else "a SEQSERVE_ setting"
        print(f"invalid setting {name}: not valid JSON (got {os.environ.get(name)!r}); it takes a JSON value "
              "(the README's settings table shows each: a list such as [\"a\"], or [] for none)", file=sys.stderr)
        sys.exit(STARTUP_FAILED)
    configure_logging(settings)
    for line in unknown_variables(os.environ):  # once, here, not in each worker
        logging.getLogger("seqserve").warning(line)
    if settings.workers == 1:
        serve()
        return
    sys.exit(Supervisor(settings).run())


if __name__ == "__main__":
    main()
