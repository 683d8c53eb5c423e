"""Compressed request bodies (`Content-Encoding`): decoded before MIME, within the size limit."""

from __future__ import annotations

import gzip
import http.client
import sqlite3
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from mm7soap import contentcoding, errors
from mm7soap.settings import Settings
from tests.helpers import SINCH_CONTENT_TYPE, Response, assert_fault, call, data
from tests.test_mime import multipart, part
from tests.test_serving import BIN, free_port, run, wait_until_listening

ENVELOPE = data("sinch_delivery_report.xml")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\x00\r\n" * 50


def raw_deflate(body: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


def bomb(size: int) -> bytes:
    """`size` zero bytes gzipped (about a thousandth of it), made without holding them all."""
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    pieces = [compressor.compress(zeros) for _ in range(size // len(zeros))]
    return b"".join([*pieces, compressor.flush()])


def post(app, body: bytes, encoding: str, content_type: str = SINCH_CONTENT_TYPE) -> Response:
    return call(app, body, content_type=content_type, headers={"Content-Encoding": encoding})


def acknowledged(response: Response) -> None:
    assert response.status == 200, response.body
    assert response.text("Body/DeliveryReportRsp/Status/StatusCode") == "1000"


def fault_details(response: Response) -> str:
    return response.text("Body/Fault/detail/VASPErrorRsp/Status/Details") or ""


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZip", gzip.compress),
        ("deflate", zlib.compress),  # RFC 9110's deflate: zlib-wrapped
        ("deflate", raw_deflate),  # what many clients send instead
        ("gzip, deflate", lambda body: zlib.compress(gzip.compress(body))),  # undone last first
        ("deflate,gzip", lambda body: gzip.compress(raw_deflate(body))),
        ("gzip, identity", gzip.compress),
    ],
)
def test_a_compressed_report_is_decoded_and_stored_as_sent_uncompressed(app, encoding, encode):
    acknowledged(post(app, encode(ENVELOPE), encoding))
    [row] = list(app.store.delivery_reports())
    assert row["raw_envelope"] == ENVELOPE
    assert row["message_id"] == "481516234200000001"


def test_a_gzipped_mo_is_decoded_before_its_mime_parts_are_read(app):
    envelope = data("deliver_sinch.xml").decode().format(transaction_id="gz-mo", linked_id="gz-mo-1").encode()
    body = multipart(
        [
            part(["Content-Type: text/xml", "Content-ID: <soap-start>"], envelope),
            part(["Content-Type: image/png", "Content-ID: <default.cid>"], PNG),
        ]
    )
    content_type = 'multipart/related; type="text/xml"; boundary="MM7-b0undary"; start="<soap-start>"'
    response = post(app, gzip.compress(body), "gzip", content_type)
    assert response.status == 200, response.body
    assert response.text("Body/DeliverRsp/Status/StatusCode") == "1000"
    [message] = list(app.store.messages())
    assert message["raw_envelope"] == envelope
    assert [p["data"] for p in app.store.message_parts(message["id"], with_data=True)] == [PNG]


@pytest.mark.parametrize("max_body_bytes", [1_000_000, Settings().max_body_bytes])
def test_a_decompression_bomb_is_413_without_inflating_it(make_app, max_body_bytes):
    """50 MB of zeros in a 50 KB gzip body: refused as it passes the limit, never held whole."""
    app = make_app(max_body_bytes=max_body_bytes)
    body = bomb(50 * 1024 * 1024)
    assert len(body) < 100 * 1024
    tracemalloc.start()
    try:
        response = post(app, body, "gzip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status == 413
    assert response.headers["Connection"] == "close"
    assert_fault(replace(response, status=500), "Client", 2004)
    assert "inflates to over" in fault_details(response)
    assert peak < max_body_bytes + 1024 * 1024  # the limit and change: not 50 MB, nor twice the limit
    assert list(app.store.delivery_reports()) == []


def test_a_stacked_coding_is_limited_at_every_step(make_app):
    """A gzip body inside a deflate body: the inner bomb is refused too."""
    app = make_app(max_body_bytes=1_000_000)
    response = post(app, zlib.compress(bomb(20 * 1024 * 1024)), "gzip, deflate")
    assert response.status == 413
    assert list(app.store.delivery_reports()) == []


def test_a_body_decoding_to_exactly_the_limit_is_taken():
    body = b"x" * 1000
    assert contentcoding.decode("gzip", gzip.compress(body), 1000) == body
    with pytest.raises(errors.TooLargeError):
        contentcoding.decode("gzip", gzip.compress(body), 999)


def test_concatenated_gzip_members_are_one_body():
    assert contentcoding.decode("gzip", gzip.compress(b"<a>") + gzip.compress(b"</a>"), 100) == b"<a></a>"


COMPRESSED = gzip.compress(ENVELOPE)


@pytest.mark.parametrize(
    ("encoding", "body", "why"),
    [
        pytest.param("gzip", COMPRESSED[: len(COMPRESSED) // 2], "ends before its stream does", id="gzip cut short"),
        pytest.param(
            "gzip",
            COMPRESSED[:10] + bytes(b ^ 0x55 for b in COMPRESSED[10:40]) + COMPRESSED[40:],
            "gzip body",
            id="gzip damaged",
        ),
        pytest.param("gzip", COMPRESSED[:-8] + b"\0" * 8, "incorrect data check", id="gzip bad CRC"),
        pytest.param("gzip", b"", "ends before its stream does", id="gzip empty"),
        pytest.param("gzip", COMPRESSED + b"trailing junk", "incorrect header check", id="gzip trailing junk"),
        pytest.param("deflate", zlib.compress(ENVELOPE)[:-4], "ends before its stream does", id="deflate cut short"),
        pytest.param(
            "deflate",
            zlib.compress(ENVELOPE) + b"junk",
            "bytes follow the end of its stream",
            id="deflate trailing junk",
        ),
        pytest.param("deflate", b"\xff" * 64, "deflate body could not be decoded", id="deflate garbage"),
    ],
)
def test_a_corrupt_or_truncated_compressed_body_is_400_and_4004(app, encoding, body, why):
    response = post(app, body, encoding)
    assert response.status == 400
    assert_fault(replace(response, status=500), "Client", 4004)
    details = fault_details(response)
    assert f"the {encoding} body could not be decoded" in details
    assert why in details
    assert list(app.store.delivery_reports()) == []


@pytest.mark.parametrize("encoding", ["br", "compress", "zstd", "x-compress", "gzip, br", "snappy"])
def test_an_unsupported_coding_is_415_and_4004_naming_the_supported_ones(app, encoding):
    response = post(app, gzip.compress(ENVELOPE), encoding)
    assert response.status == 415
    assert response.headers["Accept-Encoding"] == "gzip, deflate"
    assert_fault(replace(response, status=500), "Client", 4004)
    details = fault_details(response)
    assert "is not supported" in details
    assert "supported: gzip, x-gzip, deflate, identity" in details
    assert list(app.store.delivery_reports()) == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "8bit", "utf-8", "br"])
@pytest.mark.parametrize("before", [b"", b"\r\n "])
def test_a_plain_body_under_a_coding_label_is_taken_as_it_is(app, encoding, before):
    """Nothing in it is unclear: refusing it would lose the report."""
    acknowledged(post(app, before + ENVELOPE, encoding))
    [row] = app.store.delivery_reports()
    assert row["raw_envelope"] == before + ENVELOPE


@pytest.mark.parametrize("encoding", ["8bit", "binary", "gzip"])
def test_a_plain_mime_body_with_a_preamble_under_a_coding_label_is_taken_as_it_is(app, encoding):
    body = multipart(
        [part(["Content-Type: text/xml"], ENVELOPE)], "b0undary", "\r\n", b"This is a multi-part message.\r\n"
    )
    response = call(
        app, body, content_type='multipart/related; boundary="b0undary"', headers={"Content-Encoding": encoding}
    )
    acknowledged(response)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, database = free_port(), tmp_path / "live.db"
    env = {"MM7SOAP_DATABASE": str(database), "MM7SOAP_PORT": str(port), "MM7SOAP_WORKERS": "1"}
    for process in run([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "mm7soap.wsgi:application"], env):
        wait_until_listening(port, process)
        yield port, database


def test_a_gzipped_report_through_gunicorn_is_acknowledged(live):
    port, database = live
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST", "/mm7", gzip.compress(ENVELOPE), {"Content-Type": SINCH_CONTENT_TYPE, "Content-Encoding": "gzip"}
        )
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    assert response.status == 200, answer
    assert b"<StatusCode>1000</StatusCode>" in answer
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT raw_envelope FROM delivery_reports").fetchall() == [(ENVELOPE,)]
