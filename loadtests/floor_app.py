"""The floor under the translation burst's refusals (loadtests/reliability.py).

An ASGI app that refuses every request at once, served by seqserve's own uvicorn protocol
(service/http_protocol.py, which stamps each request's arrival when its bytes are read) with no
model, no pass budget and no access log. Each answer's body is the server-side time in
milliseconds from that read to the answer: what the HTTP stack alone costs a burst of fresh
connections on this machine, beside which the server's own refusal times can be read.

    python -m uvicorn loadtests.floor_app:app --loop uvloop \
        --http service.http_protocol:ArrivalStampingProtocol
"""

from __future__ import annotations

import time

from starlette.types import Receive, Scope, Send

from service.http_protocol import arrived_at


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
