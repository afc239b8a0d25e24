"""The floor under the translation burst's refusals (loadtests/reliability.py).

An ASGI app that refuses every request at once, served by seqserve's own uvicorn protocol
(service/http_protocol.py, which stamps each request's arrival when its bytes are read) with no
model and no access log. Each answer's body is the server-side time in milliseconds from that
read to the answer: what the HTTP stack alone costs a burst of fresh connections on this
machine, beside which the server's own refusal times can be read.

Without a pass budget the event loop parses every request it reads in one pass, and a burst's
later requests wait unread in the kernel, where no stamp sees them. ``--in-line`` gives the app
the server's pass budget (``SEQSERVE_REQUESTS_PER_LOOP_PASS``, as the server reads it): requests
past a pass's share wait in line after their read, counted, as the server's refusals are.

    python -m loadtests.floor_app --port 8010 [--in-line]
"""

from __future__ import annotations

import argparse
import time
import types

import uvicorn
from starlette.types import Receive, Scope, Send

from service.http_protocol import ArrivalStampingProtocol, arrived_at
from service.loop_budget import PassBudget
from service.settings import Settings


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        return
    while (await receive()).get("more_body"):  # read the body, as the server's refusals do
        pass
    arrived = arrived_at(scope)
    body = b"nan" if arrived is None else f"{(time.perf_counter() - arrived) * 1000:.3f}".encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class InLine:
    """``app`` with the server's pass budget in its state, where the protocol looks for it."""

    def __init__(self, per_pass: int) -> None:
        self.state = types.SimpleNamespace(pass_budget=PassBudget(per_pass))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--in-line", action="store_true", help="with the server's pass budget")
    args = p.parse_args(argv)
    served = InLine(Settings().requests_per_loop_pass) if args.in_line else app
    uvicorn.run(served, host="127.0.0.1", port=args.port, loop="uvloop", http=ArrivalStampingProtocol,
                access_log=False, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
