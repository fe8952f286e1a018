"""``count_newlines`` counts what ``bytes.count`` counts, on any span of any bytes (the short
spans it hands to ``bytes.count``, the long ones it counts by ``bytes.replace``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from detector.newlines import SHORT, count_newlines

_blocks = st.one_of(
    st.binary(max_size=64),
    st.lists(st.sampled_from([b"\n", b"a", b"line\n", b"\xff\n", b"x" * 700]), max_size=40).map(
        b"".join
    ),  # long spans, on both sides of SHORT
)


@given(_blocks, st.integers(-3 * SHORT, 3 * SHORT), st.one_of(st.none(), st.integers(-100, 30_000)))
def test_count_newlines_is_bytes_count(data: bytes, start: int, end: int | None) -> None:
    assert count_newlines(data, start, end) == data.count(b"\n", start, end)


def test_a_whole_long_block_and_its_spans() -> None:
    data = b"a line of the log\n" * 1000 + b"no newline at the end"
    assert len(data) > SHORT
    assert count_newlines(data) == 1000
    assert count_newlines(data, 18) == 999
    assert count_newlines(data, 5, 18 * 500) == 500
    assert count_newlines(data, len(data) + 5) == 0
