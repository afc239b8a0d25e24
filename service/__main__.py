"""python -m service: run the API, configured by SEQSERVE_* settings (see the README's table).

One server process (service/server.py), or with SEQSERVE_WORKERS > 1 a supervisor
(service/workers.py) running that many on one port.
"""

from __future__ import annotations

import logging
import os
import sys

from pydantic import ValidationError

from service.logs import configure_logging
from service.server import STARTUP_FAILED, serve
from service.settings import Settings, kubernetes_hint, unknown_variables
from service.workers import Supervisor


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:  # one line per bad setting, named as it is set, not a traceback
        for error in exc.errors():
            name = "SEQSERVE_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"invalid setting {name}: {error['msg']} (got {error.get('input')!r})"
                  f"{kubernetes_hint(error.get('input'))}", file=sys.stderr)
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
