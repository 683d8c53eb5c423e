"""Request bodies sent compressed: `Content-Encoding: gzip`, `x-gzip` or `deflate`.

Some MMSCs and HTTP client libraries compress what they post.  The body is decoded here,
before MIME, so that everything after (the envelope, the parts, `raw_envelope`) sees the bytes
the client meant.  The size limit holds for the decoded body too: it is inflated a step at a
time and refused once past the limit, so a small body that would inflate to gigabytes (a
decompression bomb) costs no more memory than an honest body at the limit.
"""

from __future__ import annotations

import zlib

from mm7soap import errors

# What Accept-Encoding advertises on a 415; x-gzip is gzip's old name (RFC 9110 §8.4.1.3).
ADVERTISED = ("gzip", "deflate")
GZIP_WBITS = 16 + zlib.MAX_WBITS
ZLIB_WBITS = zlib.MAX_WBITS
RAW_WBITS = -zlib.MAX_WBITS
# Inflated at most this much at a time, so that a bomb is stopped just past the limit.
INFLATE_STEP = 64 * 1024


def decode(content_encoding: str | None, body: bytes, limit: int) -> bytes:
    """`body` with every coding of the Content-Encoding header undone, last applied first.

    Raises UnsupportedEncodingError (415) for a coding not known here, UndecodableBodyError
    (400) for a corrupt or truncated body, and TooLargeError (413) when the body inflates
    past `limit` bytes.  A body that cannot be decoded as labelled but is plain XML or MIME
    is taken as it is: some clients label what they did not compress (`Content-Encoding:
    8bit`, `gzip` on a plain body), and refusing a request that is clear would lose it.
    """
    try:
        return undo_codings(content_encoding, body, limit)
    except (errors.UnsupportedEncodingError, errors.UndecodableBodyError):
        if looks_plain(body):
            return body
        raise


def looks_plain(body: bytes) -> bool:
    """Whether `body` starts as text does: its first bytes (after any BOM) printable ASCII or
    white space, as XML, a MIME boundary or a MIME preamble ("This is a multi-part message")
    are.  A gzip, zlib, raw deflate or brotli stream has binary bytes within its first few."""
    start = body.removeprefix(b"\xef\xbb\xbf")[:PLAIN_PREFIX]
    return bool(start) and all(byte in PLAIN_BYTES for byte in start)


PLAIN_PREFIX = 64
PLAIN_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


def undo_codings(content_encoding: str | None, body: bytes, limit: int) -> bytes:
    codings = [coding.strip().lower() for coding in (content_encoding or "").split(",") if coding.strip()]
    unsupported = [coding for coding in codings if coding not in UNDO]
    if unsupported:  # refused before any work is done on the others
        raise errors.UnsupportedEncodingError(
            f"Content-Encoding {', '.join(unsupported)} is not supported; supported: gzip, x-gzip, deflate, identity",
            ADVERTISED,
        )
    for coding in reversed(codings):
        body = UNDO[coding](body, limit)
    return body


def identity(body: bytes, limit: int) -> bytes:
    return body


def gunzip(body: bytes, limit: int) -> bytes:
    return inflate(body, GZIP_WBITS, limit, "gzip")


def undeflate(body: bytes, limit: int) -> bytes:
    """RFC 9110's deflate is zlib-wrapped, but many clients send raw deflate: either is taken."""
    return inflate(body, ZLIB_WBITS if zlib_header(body) else RAW_WBITS, limit, "deflate")


def zlib_header(body: bytes) -> bool:
    """Whether `body` starts with a zlib header (RFC 1950: method 8, a check sum of 31).

    Raw deflate never does: such a first byte would be a non-final stored block with set
    padding bits, which no compressor writes.
    """
    return len(body) >= 2 and body[0] & 0x0F == 8 and body[0] >> 4 <= 7 and int.from_bytes(body[:2], "big") % 31 == 0


def inflate(body: bytes, wbits: int, limit: int, name: str) -> bytes:
    """The decompressed bytes of one stream, or of consecutive gzip members (as gzip writes
    concatenated files), never more than `limit + 1` of them held."""
    pieces: list[bytes] = []
    rest = inflate_stream(body, wbits, limit, name, pieces)
    while rest and wbits == GZIP_WBITS:
        rest = inflate_stream(rest, wbits, limit, name, pieces)
    if rest:
        raise errors.UndecodableBodyError(f"the {name} body could not be decoded: bytes follow the end of its stream")
    return b"".join(pieces)


def inflate_stream(data: bytes, wbits: int, limit: int, name: str, pieces: list[bytes]) -> bytes:
    """Adds the output of the stream at the start of `data` to `pieces`, a step at a time, and
    returns the bytes that follow the stream.

    One `decompress(data, limit + 1)` would be bounded too, but zlib gathers its output in
    blocks and copies them into one bytes object at the end: twice the limit, for a bomb.
    """
    stream = zlib.decompressobj(wbits)
    size = sum(len(piece) for piece in pieces)
    while True:
        # max_length >= 1, since size <= limit here: 0 would mean no limit at all.
        step = min(INFLATE_STEP, limit + 1 - size)
        try:
            piece = stream.decompress(data, step)
        except zlib.error as exc:
            raise errors.UndecodableBodyError(f"the {name} body could not be decoded: {exc}") from None
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            raise errors.TooLargeError(f"the {name} body inflates to over {limit} bytes; at most {limit} are accepted")
        if stream.eof:
            return stream.unused_data
        if len(piece) < step:  # every byte sent has been inflated, and the stream goes on
            raise errors.UndecodableBodyError(f"the {name} body could not be decoded: it ends before its stream does")
        data = stream.unconsumed_tail  # may be empty with output still pending: ask again


UNDO = {"identity": identity, "gzip": gunzip, "x-gzip": gunzip, "deflate": undeflate}
