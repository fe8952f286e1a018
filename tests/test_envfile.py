"""The systemd EnvironmentFile= reader (``detector/config/envfile.py``), on real files, case by
case as ``man systemd.exec`` describes the syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.config.envfile import read_env_file


def read(tmp_path: Path, text: str | bytes) -> dict[str, str]:
    path = tmp_path / "detector.env"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return read_env_file(path).values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\nB=two words\n", {"A": "1", "B": "two words"}),
        ("A=  padded value \t\n", {"A": "padded value"}),
        ("  A = spaced key\n", {"A": "spaced key"}),
        ("A=\n", {"A": ""}),
        ("A=no newline at the end", {"A": "no newline at the end"}),
        ("A=1\nA=2\n", {"A": "2"}),  # the later line wins
        ("A=x=y\n", {"A": "x=y"}),
        ("A=https://h/x?a=1#frag ; not a comment\n", {"A": "https://h/x?a=1#frag ; not a comment"}),
        ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
    ],
)
def test_plain_assignments(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    assert read(tmp_path, text) == expected


def test_comments_empty_lines_and_lines_without_equals_are_ignored(tmp_path: Path) -> None:
    text = "# hash comment\n; semicolon comment\n\n   # indented comment\nJUSTAWORD\nA=1\n"
    assert read(tmp_path, text) == {"A": "1"}


def test_a_backslash_ending_a_comment_does_not_continue_it(tmp_path: Path) -> None:
    assert read(tmp_path, "# comment \\\nA=1\n") == {"A": "1"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=one\\\ntwo\n", "onetwo"),  # backslash-newline continues the line
        ("A=a\\\\b\n", "a\\b"),  # \\ is one backslash
        ("A=a\\ \n", "a "),  # an escaped space is kept at the end
        ("A=\\$x\\n\n", "$xn"),  # any other escaped character is itself
        ("A=say \"hi\" 'there'\n", "say \"hi\" 'there'"),  # quotes after the start are kept
    ],
)
def test_unquoted_values_use_shell_backslash_rules(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert read(tmp_path, text) == {"A": expected}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A='  kept  '\n", "  kept  "),
        ("A='$x \\n \\'\n", "$x \\n \\"),  # no escapes at all
        ("A='first\nsecond'\nB=2\n", "first\nsecond"),  # spans lines
        ("A=  'x'  \n", "x"),  # whitespace outside the quotes goes
        ("A='a'b\n", "ab"),
    ],
)
def test_single_quoted_values_are_verbatim(tmp_path: Path, text: str, expected: str) -> None:
    assert read(tmp_path, text)["A"] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('A="  kept  "\n', "  kept  "),
        ('A="q\\"q \\\\ \\` \\$"\n', 'q"q \\ ` $'),  # these four are unescaped
        ('A="a\\nb"\n', "a\\nb"),  # any other escape keeps its backslash
        ('A="one \\\ntwo"\n', "one two"),  # backslash-newline joins lines
        ('A="first\nsecond"\n', "first\nsecond"),  # spans lines
        ('A="x" # trailing\n', "x# trailing"),  # not a comment: text after the quote
    ],
)
def test_double_quoted_values_use_shell_double_quote_rules(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert read(tmp_path, text)["A"] == expected


def test_export_is_not_systemd_syntax_and_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "detector.env"
    path.write_text("A=1\nexport TOKEN=secret\n2BAD=x\n")
    env = read_env_file(path)
    assert env.values == {"A": "1"}
    assert env.warnings == [
        f"{path}:2: 'export TOKEN' is not a variable name, line ignored (`export` is shell "
        "syntax; systemd ignores such a line)",
        f"{path}:3: '2BAD' is not a variable name, line ignored",
    ]


def test_invalid_utf8_values_are_ignored_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "detector.env"
    path.write_bytes(b"A=caf\xe9\nB=ok\n")
    env = read_env_file(path)
    assert env.values == {"B": "ok"}
    assert env.warnings == [f"{path}:1: the value of A is not valid UTF-8, line ignored"]


def test_a_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_env_file(tmp_path / "missing.env")
