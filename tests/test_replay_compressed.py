"""``detector test`` of compressed files: gzip, xz, bzip2 and zstd, told by their first bytes,
decompressed as a stream, with the same lines, times and alerts as the plain file. The files are
compressed here, from the Loghub samples and from a generated log with CRLF endings, invalid
UTF-8 and an unterminated last line."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard

from detector.model import ThresholdSpec
from detector.replay import ReplayResult, replay, sample_lines
from tests.helpers import config, loghub_log, rule
from tests.test_replay_jobs import generated_log, outcome, rules

ROOT = Path(__file__).resolve().parents[1]
STARTED_AT = datetime(2026, 2, 1, tzinfo=UTC)
SMALL_BLOCK = 4096
MTIME = datetime(2025, 8, 1, tzinfo=UTC).timestamp()

COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress,
    "xz": lzma.compress,
    "bz2": bz2.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


def compressed(plain: Path, kind: str, name: str | None = None) -> Path:
    """``plain`` compressed with ``kind`` beside it (named ``name``), with the same mtime."""
    out = plain.with_name(name or f"{plain.name}.{kind}")
    out.write_bytes(COMPRESS[kind](plain.read_bytes()))
    st = os.stat(plain)
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    return out


def loghub_copy(tmp_path: Path, dataset: str) -> Path:
    [src] = loghub_log(dataset)
    plain = tmp_path / src.name
    plain.write_bytes(src.read_bytes())
    os.utime(plain, (MTIME, MTIME))
    return plain


def times(res: ReplayResult) -> tuple[datetime | None, datetime | None]:
    return res.first_at, res.last_at


@pytest.mark.parametrize("kind", ["gz", "xz", "bz2", "zst"])
def test_a_compressed_loghub_sample_gives_the_alerts_of_the_plain_file(
    tmp_path: Path, kind: str
) -> None:
    plain = loghub_copy(tmp_path, "Linux")  # syslog stamps: no year, inferred from the mtime
    packed = compressed(plain, kind)
    assert packed.stat().st_size < plain.stat().st_size / 5
    cfg = config(
        rule(
            "auth",
            kind="threshold",
            match=r"authentication failure.*rhost=(?P<host>\S+)",
            threshold=ThresholdSpec(5, timedelta(minutes=10), by=("host",)),
        ),
        rule("kernel", match=r"kernel: (?P<what>\w+)", group_by=("what",), repeat=None),
    )
    want = replay(cfg, [(str(plain), "s")], present=STARTED_AT, block=SMALL_BLOCK)
    got = replay(cfg, [(str(packed), "s")], present=STARTED_AT, block=SMALL_BLOCK)
    assert want.lines == 2000 and want.counts[("auth", "firing")] > 10
    assert outcome(got) == outcome(want)
    assert times(got) == times(want)
    assert want.last_at is not None and want.last_at.year == 2025  # the mtime's year


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_crlf_invalid_utf8_and_an_unterminated_last_line_read_the_same_compressed(
    tmp_path: Path, kind: str
) -> None:
    plain = generated_log(tmp_path / "app.log", lines=6000)
    packed = compressed(plain, kind)
    cfg = config(*rules())
    want = replay(cfg, [(str(plain), "s")], present=STARTED_AT, block=SMALL_BLOCK)
    got = replay(cfg, [(str(packed), "s")], present=STARTED_AT, block=SMALL_BLOCK)
    assert {n["rule"] for n in want.notifications} == {"errors", "disk", "backup"}
    assert outcome(got) == outcome(want)
    # --jobs: a compressed file is read in this process, with the same result
    jobs = replay(cfg, [(str(packed), "s")], present=STARTED_AT, jobs=2, block=SMALL_BLOCK)
    assert outcome(jobs) == outcome(want)


def test_the_compression_is_told_by_the_first_bytes_not_the_name(tmp_path: Path) -> None:
    plain = loghub_copy(tmp_path, "OpenSSH")
    disguised = compressed(plain, "gz", name="OpenSSH.log")  # gzip inside, no .gz
    fake = tmp_path / "plain.log.gz"  # a plain file named .gz
    fake.write_bytes(plain.read_bytes())
    os.utime(fake, (MTIME, MTIME))
    cfg = config(rule("fail", match=r"Failed password for (?P<user>\S+)", group_by=("user",)))
    want = replay(cfg, [(str(plain), "s")], present=STARTED_AT)
    assert want.matches["fail"] > 100
    for path in (disguised, fake):
        assert outcome(replay(cfg, [(str(path), "s")], present=STARTED_AT)) == outcome(want)


def test_the_year_of_syslog_stamps_counts_the_new_years_a_compressed_file_spans(
    tmp_path: Path,
) -> None:
    start = datetime(2024, 12, 30, 22, 0, tzinfo=UTC)
    lines = [
        (start + timedelta(minutes=7 * i)).strftime("%b %d %H:%M:%S") + f" host app: tick {i}\n"
        for i in range(2000)
    ]
    plain = tmp_path / "syslog"
    plain.write_text("".join(lines))
    end = (start + timedelta(minutes=7 * 1999, hours=1)).timestamp()
    os.utime(plain, (end, end))
    packed = compressed(plain, "xz")
    assert sample_lines(str(packed), SMALL_BLOCK) == sample_lines(str(plain), SMALL_BLOCK)
    cfg = config(rule("tick", match=r"tick 0\b"))
    got = replay(cfg, [(str(packed), "s")], present=STARTED_AT, block=SMALL_BLOCK)
    assert got.first_at == start  # 2024, though the file's mtime is in 2025
    assert got.last_at is not None and got.last_at.year == 2025


# ---------------------------------------------------------------- the command


def detector_test(*args: str, python: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *(python or ["-m", "detector"]), "test", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


RULES = """\
version: 1
sources:
  ssh: {file: /var/log/auth.log}
rules:
  - name: fail
    source: ssh
    match: 'Failed password for (?:invalid user )?(?P<user>\\S+)'
    group_by: [user]
"""


def summary(out: str) -> list[str]:
    """The output without its first line (which has the time the replay took)."""
    return out.splitlines()[1:]


def test_the_command_reads_a_gzip_file_with_jobs_in_one_process_and_says_so(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(RULES)
    plain = loghub_copy(tmp_path, "OpenSSH")
    packed = compressed(plain, "gz")
    want = detector_test("-c", str(cfg), str(plain))
    got = detector_test("-c", str(cfg), "--jobs", "2", str(packed))
    assert want.returncode == got.returncode == 1, got.stderr
    assert summary(got.stdout) == summary(want.stdout)
    assert "FIRING" in got.stdout
    assert (
        f"note: --jobs 2 does not apply to {packed} (gzip-compressed): a compressed file is "
        "decompressed as a stream, in one process"
    ) in got.stderr


def test_a_corrupt_compressed_file_is_a_clear_error_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(RULES)
    packed = compressed(loghub_copy(tmp_path, "OpenSSH"), "gz")
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    out = detector_test("-c", str(cfg), str(cut))
    assert out.returncode == 2
    assert out.stderr.startswith(f"{cut}: cannot decompress (gz): ")
    assert "corrupt or cut short" in out.stderr and "Traceback" not in out.stderr


def test_zstd_without_the_zstandard_package_says_what_to_install(tmp_path: Path) -> None:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(RULES)
    packed = compressed(loghub_copy(tmp_path, "OpenSSH"), "zst")
    # this interpreter without the package: importing it fails, as where it is not installed
    no_zstd = [
        "-c",
        "import sys; sys.modules['zstandard'] = None; sys.argv[0] = 'detector'; "
        "from detector.cli import main; sys.exit(main())",
    ]
    out = detector_test("-c", str(cfg), str(packed), python=no_zstd)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"{packed}: zstd-compressed, and the optional zstandard package is not installed — "
        "pip install zstandard (or the detector[zstd] extra), or decompress it first (zstd -d)"
    )
