"""HTTP content codings: compressed request bodies in, compressed answers out (gzip and deflate, as Triton
and its clients use them).

A request body with ``Content-Encoding: gzip`` or ``deflate`` is inflated within ``max_request_bytes``. An
answer is compressed when the client's ``Accept-Encoding`` names gzip or deflate (with a non-zero q);
only inference answers are, which is what Triton's clients expect. A large answer is compressed in a
thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import mmap
import zlib

from kubeserve.runtime.protocol.errors import BadRequest, PayloadTooLarge

# zlib's window bits: a gzip wrapper, a zlib wrapper (HTTP's "deflate"), or none (what some clients send).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
RAW_DEFLATE_WBITS = -zlib.MAX_WBITS
# Inflated this much at a time.
INFLATE_PIECE_BYTES = 1024 * 1024
# Below this many bytes (in), coding on the event loop costs less than the trip to a thread.
OFF_LOOP_BYTES = 64 * 1024


def accepted_coding(accept_encoding: str) -> str | None:
    """The coding to answer with: the first of gzip and deflate that ``Accept-Encoding`` accepts, in the
    client's order; None for identity."""
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if name not in _WBITS:
            continue
        quality = params.strip().lower()
        if quality.startswith("q="):
            try:
                if float(quality[2:]) <= 0:
                    continue
            except ValueError:
                continue
        return name
    return None


async def inflate(body: bytes | memoryview, coding: str, limit: int) -> bytes | memoryview:
    """``body`` decoded from ``coding`` (gzip, deflate, identity), at most ``limit`` bytes of it; a large one in a
    thread, off the event loop."""
    if len(body) < OFF_LOOP_BYTES:
        return _inflate(body, coding, limit)
    return await asyncio.to_thread(_inflate, body, coding, limit)


def _inflate(body: bytes | memoryview, coding: str, limit: int) -> bytes | memoryview:
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in _WBITS:
        raise BadRequest(f"unsupported Content-Encoding: {coding} (accepted: gzip, deflate, identity)")
    for wbits in (_WBITS[coding], RAW_DEFLATE_WBITS) if coding == "deflate" else (_WBITS[coding],):
        decoder = zlib.decompressobj(wbits)
        # Inflated in pieces into one buffer that never moves (the kernel gives it memory only as it is written):
        # at most ``limit`` bytes at any moment, where zlib's own output would be joined from blocks at the end.
        out = mmap.mmap(-1, limit)
        data = body
        try:
            while not decoder.eof:
                piece = decoder.decompress(data, INFLATE_PIECE_BYTES)
                if not piece and not decoder.unconsumed_tail:
                    break  # the input ended before the compressed data did
                if out.tell() + len(piece) > limit:
                    raise PayloadTooLarge(f"request body exceeds max_request_bytes ({limit} bytes) once inflated")
                out.write(piece)
                data = decoder.unconsumed_tail
        except zlib.error:
            continue
        if decoder.eof and decoder.unused_data:
            raise BadRequest(
                f"the request body has {len(decoder.unused_data)} bytes after its compressed data "
                f"(Content-Encoding: {coding}, one member only)"
            )
        if decoder.eof:
            return memoryview(out)[: out.tell()]
    raise BadRequest(f"cannot read the request body (Content-Encoding: {coding}): it is malformed")


def _compress(body: bytes, coding: str) -> bytes:
    encoder = zlib.compressobj(wbits=_WBITS[coding])
    return encoder.compress(body) + encoder.flush()


async def compress(body: bytes, coding: str) -> bytes:
    if len(body) < OFF_LOOP_BYTES:
        return _compress(body, coding)
    return await asyncio.to_thread(_compress, body, coding)
