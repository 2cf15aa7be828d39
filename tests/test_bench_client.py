"""The generator's HTTP/1.1 response parser and request encoder (no sockets)."""

from __future__ import annotations

import pytest

from optkit.bench._client import ProtocolViolation, ResponseParser, encode_request


def feed_in_pieces(raw: bytes, size: int) -> tuple[ResponseParser, list[bool]]:
    parser = ResponseParser()
    return parser, [parser.feed(raw[i:i + size]) for i in range(0, len(raw), size)]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_content_length_response_completes_exactly_at_its_last_byte(size: int) -> None:
    """A Content-Length response is complete on its last byte, however it is split."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: x\r\n\r\nhello world"
    parser, done = feed_in_pieces(raw, size)
    assert done[-1] and not any(done[:-1])
    assert parser.status == 200 and parser.keep_alive


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_chunked_response_with_trailer_completes(size: int) -> None:
    """Chunked bodies (with extensions and a trailer) end at the blank line after 0."""
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    parser, done = feed_in_pieces(raw, size)
    assert done[-1] and not any(done[:-1])


CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"".join(b"%x\r\n" % n + bytes([65 + i]) * n + b"\r\n"
                      for i, n in enumerate([3000, 1, 17, 4096]))
           + b"0\r\n\r\n")


@pytest.mark.parametrize("size", [1, 2, 7, 64, 1000, 4097, len(CHUNKED)])
def test_a_streamed_answer_completes_on_its_last_byte_however_it_is_read(size: int) -> None:
    """Chunks are walked by offset, not buffered: the end is still found exactly."""
    parser, done = feed_in_pieces(CHUNKED, size)
    assert done[-1] and not any(done[:-1])


def test_a_streamed_answer_split_anywhere_in_two_completes() -> None:
    """Every cut, inside a size line, a chunk, its CRLF or the trailer, is handled."""
    for cut in range(1, len(CHUNKED)):
        parser = ResponseParser()
        assert not parser.feed(CHUNKED[:cut]), cut
        assert parser.feed(CHUNKED[cut:]), cut
        with pytest.raises(ProtocolViolation):  # nothing may follow the end
            parser.feed(b"x")


def test_a_streamed_error_keeps_the_start_of_its_body() -> None:
    parser = ResponseParser()
    head = b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert not parser.feed(head + b"4\r\n")
    assert not parser.feed(b'{"er\r\n')
    assert parser.feed(b'5\r\nror"}\r\n0\r\n\r\n')
    assert parser.status == 500 and parser.sample.startswith(b'{"er')


def test_error_body_sample_is_kept_and_connection_close_is_seen() -> None:
    """A 4xx/5xx keeps the start of its body; Connection: close forbids reuse."""
    parser = ResponseParser()
    assert parser.feed(b'HTTP/1.1 503 Unavailable\r\nContent-Length: 17\r\n'
                       b'Connection: close\r\n\r\n{"error": "busy"}')
    assert parser.status == 503 and not parser.keep_alive
    assert parser.sample == b'{"error": "busy"}'


def test_interim_100_continue_is_skipped() -> None:
    """An interim 1xx response is skipped; the final response is parsed."""
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert parser.status == 204


def test_body_without_length_runs_until_close() -> None:
    """Without Content-Length or chunking the body runs until the server closes."""
    parser = ResponseParser()
    assert not parser.feed(b"HTTP/1.0 200 OK\r\n\r\npartial")
    assert parser.until_close and not parser.keep_alive


@pytest.mark.parametrize("raw", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc",
                                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_malformed_responses_raise_protocol_violation(raw: bytes) -> None:
    """Garbage status lines, bad chunk sizes and extra bytes are protocol errors."""
    with pytest.raises(ProtocolViolation):
        ResponseParser().feed(raw)


def test_reset_allows_the_next_response_on_the_same_connection() -> None:
    """After reset() the parser reads the next response from scratch."""
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    parser.reset()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert parser.status == 200 and parser.sample == b""


def test_encode_request_has_host_length_and_body() -> None:
    """A POST carries Host, Content-Type, Content-Length and the body verbatim."""
    raw = encode_request("POST", "/v2/models/m/infer", "127.0.0.1:80", b'{"inputs":[]}')
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1:80\r\n")
    assert b"Content-Length: 13" in head and body == b'{"inputs":[]}'


def test_retried_mark_is_read_from_the_head_and_cleared_by_reset() -> None:
    """optkit-retried: 1 (any case) marks the answer; a 0, no header or the next answer do not."""
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nOptkit-Retried: 1\r\n\r\nok")
    assert parser.retried
    parser.reset()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") and not parser.retried
    parser.reset()
    assert parser.feed(b"HTTP/1.1 200 OK\r\noptkit-retried: 0\r\nContent-Length: 0\r\n\r\n")
    assert not parser.retried
