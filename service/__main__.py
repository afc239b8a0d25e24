"""python -m service: run the API, configured by SEQSERVE_* settings (see the README's table).

One server process (service/server.py), or with SEQSERVE_WORKERS > 1 a supervisor
(service/workers.py) running that many on one port.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service.logs import configure_logging
from service.server import STARTUP_FAILED, serve
from service.settings import Settings
from service.workers import Supervisor


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:  # one line per bad setting, named as it is set, not a traceback
        for error in exc.errors():
            name = "SEQSERVE_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"invalid setting {name}: {error['msg']} (got {error.get('input')!r})", file=sys.stderr)
        sys.exit(STARTUP_FAILED)
    if settings.workers == 1:
        serve()
        return
    configure_logging(settings)
    sys.exit(Supervisor(settings).run())


if __name__ == "__main__":
    main()
