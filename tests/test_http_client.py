"""loadtests/http_client.py: the lean client's keep-alive pool against a server that drops idle
connections the way uvicorn does after its keep-alive timeout."""

from __future__ import annotations

import asyncio
import json

from loadtests.http_client import ConnectionPool, encode_post

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _serve_once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one request, then closes the connection after a short idle time."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(_ANSWER)
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()


def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def main() -> tuple[list[int], int]:
        server = await asyncio.start_server(_serve_once_then_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool("127.0.0.1", port)
        statuses = []
        for _ in range(3):
            conn = await pool.acquire()
            status, _ = await conn.send(encode_post("/x", {}))  # a reused closed one would fail here
            statuses.append(status)
            pool.release(conn)
            await asyncio.sleep(0.3)  # longer than the server keeps an idle connection
        pool.close()
        server.close()
        return statuses, pool.opened

    statuses, opened = asyncio.run(main())
    assert statuses == [200, 200, 200] and opened == 3


def test_an_idle_connection_is_reused_until_its_idle_limit() -> None:
    async def keep_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            await reader.readexactly(2)  # the body, "{}"
            writer.write(_ANSWER)

    async def main() -> int:
        server = await asyncio.start_server(keep_open, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool("127.0.0.1", port, max_idle_s=0.2)
        for pause in (0.0, 0.0, 0.3, 0.0):  # the pause past 0.2 s retires the connection
            await asyncio.sleep(pause)
            conn = await pool.acquire()
            assert (await conn.send(encode_post("/x", {})))[0] == 200
            pool.release(conn)
        pool.close()
        server.close()
        return pool.opened

    assert asyncio.run(main()) == 2


def test_a_chunked_event_stream_is_read_to_its_end_and_the_connection_reused(committed_server) -> None:
    from loadtests.http_client import Connection

    async def run() -> list[tuple[int, bytes]]:
        conn = await Connection.open("127.0.0.1", committed_server.port)
        try:
            stream = encode_post("/v1/translate", {"text": "A dog runs in the park.", "stream": True, "beam_size": 1})
            plain = encode_post("/v1/translate", {"text": "A dog runs in the park.", "beam_size": 1})
            return [await conn.send(stream), await conn.send(plain)]
        finally:
            conn.close()

    (status, body), (plain_status, plain_body) = asyncio.run(run())
    assert status == plain_status == 200
    events = body.decode().strip().split("\n\n")
    assert len(events) > 3 and events[0].startswith("event: delta") and events[-1].startswith("event: result")
    assert json.loads(events[-1].split("data: ", 1)[1]) == json.loads(plain_body)
