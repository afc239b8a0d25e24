"""python -m service: run the API, configured by SEQSERVE_* settings (see the README's table).

One server process (service/server.py), or with SEQSERVE_WORKERS > 1 a supervisor
(service/workers.py) running that many on one port.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import resource
import sys
from typing import NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from service.logs import configure_logging
from service.server import STARTUP_FAILED, serve
from service.settings import NOT_KEYS, Settings, kubernetes_hint, summary, unknown_variables
from service.workers import Supervisor, prepare_operators_metrics_dir


def standard_streams_open() -> None:
    """A closed stdin, stdout or stderr is /dev/null from here on. Started with one closed (``<&-``,
    some process managers), the event loop's own descriptor took its number, and libuv, which never
    closes 0-2, aborted every shutdown (exit 134); Node.js, on libuv too, does the same at start."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(os.open(os.devnull, os.O_RDWR), fd)


def open_files_up_to_the_hard_limit() -> None:
    """The soft limit on open files raised to the hard one: each connection is a descriptor, and at a
    soft limit of 1,024 (systemd's default) a thousand idle clients locked out the health probes,
    with nothing in the log but gRPC's "File descriptor limit reached" (Go's runtime raises it too)."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16),
                                                        hard))


def _named(loc: tuple[int | str, ...]) -> str:
    """A bad setting as it is set: a JSON value's inner place goes after its name
    ("SEQSERVE_VERSION_POLICY (at sentiment.latest)"), not into a variable name nobody set
    (SEQSERVE_VERSION_POLICY_SENTIMENT_LATEST); the settings together where no field is named."""
    if not loc:
        return "(the settings together)"
    inner = ".".join(str(part) for part in loc[1:])
    return f"SEQSERVE_{str(loc[0]).upper()}" + (f" (at {inner})" if inner else "")


def _refuse(lines: list[str]) -> NoReturn:
    """Settings that cannot be read, said in the log's format where that one can be read (under
    LOG_FORMAT=json this line, the one that explains a crash loop, was the only one not JSON)."""
    log_format = os.environ.get("SEQSERVE_LOG_FORMAT", "").strip().lower()
    configure_logging(Settings.model_construct(log_format="json" if log_format == "json" else "text"))
    for line in lines:
        logging.getLogger("seqserve").error(line)
    sys.exit(STARTUP_FAILED)


def main(argv: list[str] | None = None) -> None:
    # settings are environment variables only: an argument (--port 9999) is refused, not ignored
    argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n\n")[0],
                            epilog="Settings: SEQSERVE_* environment variables (README, Settings), e.g. "
                                   "SEQSERVE_PORT=8000 SEQSERVE_WORKERS=2 python -m service").parse_args(argv)
    standard_streams_open()
    open_files_up_to_the_hard_limit()
    try:
        settings = Settings()
    except ValidationError as exc:  # one line per bad setting, named as it is set, not a traceback
        _refuse([f"invalid setting {_named(error['loc'])}: {error['msg']} (got {error.get('input')!r})"
                 f"{kubernetes_hint(error.get('input'))}" for error in exc.errors()])
    except SettingsError as exc:  # a JSON-valued setting that is not JSON (an empty one included)
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"SEQSERVE_{field.group(1).upper()}" if field else "a SEQSERVE_ setting"
        _refuse([f"invalid setting {name}: not valid JSON (got {os.environ.get(name)!r}); it takes a JSON value, "
                 "as the README's settings table shows for each"])
    # an API key meant, none required: fail closed (in any case, as the settings are read)
    if any(k.upper() == NOT_KEYS and v.strip() for k, v in os.environ.items()) and not settings.api_keys:
        _refuse([f"{NOT_KEYS} is not a setting, and the server would run without API keys: set SEQSERVE_API_KEYS "
                 "to a JSON list of keys (SEQSERVE_API_KEYS='[\"<key>\"]')"])
    configure_logging(settings)
    for line in unknown_variables(os.environ):  # once, here, not in each worker
        logging.getLogger("seqserve").warning(line)
    logging.getLogger("seqserve").info(summary(settings))
    if settings.model_control and settings.workers > 1:  # was said only by the first load's 409
        logging.getLogger("seqserve").warning("SEQSERVE_MODEL_CONTROL has no effect with SEQSERVE_WORKERS > 1 "
                                              "(each worker holds its own models): load and unload answer 409")
    if settings.workers == 1:
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if folder:  # prometheus-client's multiprocess mode, set by the operator: as a supervisor prepares it
            try:
                prepare_operators_metrics_dir(folder)
            except OSError as exc:
                _refuse([f"PROMETHEUS_MULTIPROC_DIR={folder}: cannot make or write it ({exc}): give a writable "
                         "folder, or leave it unset with one worker"])
        serve()
        return
    sys.exit(Supervisor(settings).run())


if __name__ == "__main__":
    main()
