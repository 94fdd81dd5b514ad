"""Upload bodies are capped while read, and auth runs before any body byte (finding 12.5).

Requests go through the real app over httpx's ASGI transport, whose receive() pulls the
request body from our generator lazily: how many chunks the app pulled is exactly how much
of the body it read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from libs.common.portfolio_csv import MAX_UPLOAD_BYTES
from services.status_api.api.body_guard import MULTIPART_OVERHEAD
from tests.test_api_helpers import api_client, count, csv_bytes, stock_rows, token_for

UPLOAD = "/api/v1/portfolios"
CHUNK = 64 * 1024
BOUNDARY = "sigmabatchtestboundary"


class Body:
    """A multipart upload streamed in 64 KiB chunks, counting what was pulled."""

    def __init__(self, file_bytes: int) -> None:
        self.file_bytes = file_bytes
        self.pulled = 0

    async def stream(self) -> AsyncIterator[bytes]:
        head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nBig\r\n"
                f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"p.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode()
        chunks = [head]
        sent = 0
        while sent < self.file_bytes:
            size = min(CHUNK, self.file_bytes - sent)
            chunks.append(b"#" * (size - 1) + b"\n")
            sent += size
        chunks.append(f"\r\n--{BOUNDARY}--\r\n".encode())
        for chunk in chunks:
            self.pulled += len(chunk)
            yield chunk

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def test_chunked_upload_over_the_cap_is_413_once_the_cap_is_passed(settings) -> None:
    headers = await token_for(settings.database_url, "alice")
    cap = MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD
    async with api_client(settings) as client:
        body = Body(file_bytes=50 * 1024 * 1024)
        response = await client.post(UPLOAD, content=body.stream(),
                                      headers={**headers, **body.headers})
        assert "content-length" not in {k.lower() for k in response.request.headers}
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert response.status_code == 413, response.text
        assert f"limit of {cap:,} bytes" in response.json()["detail"]
        assert body.pulled <= cap + 2 * CHUNK  # stopped at the cap, not at 50 MB

        # a declared Content-Length over the cap: 413 before a byte is read
        declared = Body(file_bytes=10 * 1024 * 1024)
        response = await client.post(
            UPLOAD, content=declared.stream(),
            headers={**headers, **declared.headers, "Content-Length": str(10 * 1024 * 1024)})
        assert response.status_code == 413 and declared.pulled == 0

        # under the cap, chunked: parsed as usual (here a valid portfolio of one known stock)
        small = csv_bytes(*stock_rows(["SPY"]))

        async def small_stream() -> AsyncIterator[bytes]:
            yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n"
                   f"Small\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
                   f"filename=\"p.csv\"\r\n\r\n").encode() + small
            yield f"\r\n--{BOUNDARY}--\r\n".encode()

        ok = await client.post(UPLOAD, content=small_stream(), headers={**headers, **body.headers})
        assert ok.status_code == 201, ok.text
    assert await count(settings.database_url, "portfolios") == 1


async def test_bad_token_is_401_before_the_body_is_read(settings) -> None:
    async with api_client(settings) as client:
        for auth in ({}, {"Authorization": "Bearer sb_not-a-token"}, {"Authorization": "Basic x"}):
            body = Body(file_bytes=20 * 1024 * 1024)
            response = await client.post(UPLOAD, content=body.stream(),
                                         headers={**auth, **body.headers})
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == "Bearer"
            assert body.pulled == 0, f"{body.pulled} bytes read before auth"
        # JSON endpoints too: the admin trigger with a bad token reads nothing
        body = Body(file_bytes=1024)
        response = await client.post("/api/v1/admin/batch/nightly", content=body.stream(),
                                     headers={"Authorization": "Bearer sb_nope"})
        assert response.status_code == 401 and body.pulled == 0
    assert await count(settings.database_url, "portfolios") == 0


async def test_over_a_real_uvicorn_socket(settings) -> None:
    """The same over TCP: 401 before any body byte is sent; 413 once a chunked body passes
    the cap, while the client has sent no more than the cap plus one byte."""
    import asyncio

    import uvicorn

    from services.status_api.app import create_app
    from sigmabatch.embedded import free_port

    headers = await token_for(settings.database_url, "alice")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", log_config=None))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.02)
        assert server.started

        async def request_head(authorization: str, framing: str) -> tuple:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write((f"POST {UPLOAD} HTTP/1.1\r\nHost: api\r\n"
                          f"Authorization: {authorization}\r\n"
                          f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                          f"{framing}\r\n\r\n").encode())
            await writer.drain()
            return reader, writer

        reader, writer = await request_head("Bearer sb_not-a-token",
                                            f"Content-Length: {50 * 1024 * 1024}")
        status_line = await asyncio.wait_for(reader.readline(), 30)
        assert status_line.startswith(b"HTTP/1.1 401 "), status_line
        writer.close()

        reader, writer = await request_head(headers["Authorization"], "Transfer-Encoding: chunked")
        cap = MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD
        head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"p.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode()
        writer.write(f"{len(head):x}\r\n".encode() + head + b"\r\n")
        sent = len(head)
        while sent <= cap:
            size = min(CHUNK, cap + 1 - sent)
            writer.write(f"{size:x}\r\n".encode() + b"#" * size + b"\r\n")
            await writer.drain()
            sent += size
        assert sent == cap + 1
        status_line = await asyncio.wait_for(reader.readline(), 30)
        assert status_line.startswith(b"HTTP/1.1 413 "), status_line
        rest = await asyncio.wait_for(reader.read(), 30)
        assert b"limit of" in rest
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
    assert await count(settings.database_url, "portfolios") == 0
