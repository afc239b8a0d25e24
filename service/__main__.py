"""python -m service: run the API, configured by SEQSERVE_* settings (see the README's table).

One server process (service/server.py), or with SEQSERVE_WORKERS > 1 a supervisor
(service/workers.py) running that many on one port.
"""

from __future__ import annotations

import sys

from service.server import configure_logging, serve
from service.settings import Settings
from service.workers import Supervisor


def main() -> None:
    settings = Settings()
    if settings.workers == 1:
        serve()
        return
    configure_logging(settings)
    sys.exit(Supervisor(settings).run())


if __name__ == "__main__":
    main()
