"""The live agent's 1 MiB reads reuse their memory (``lines.keep_read_buffers``, set by
``detector run``): counted in page faults of a real agent process tailing a real file.

With glibc's adaptive thresholds each freed block was given back to the kernel (the heap's top
trimmed) and the next read faulted its pages in anew: a page in three of what the agent read,
a tenth of its ingest CPU in the kernel (``bench/bench_ingest.py`` prints both).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest

from tests.agent_inproc import RULES
from tests.agent_proc import AgentProcess, config_in
from tests.receiver import Receiver
from tests.waiting import query, settled


def _minor_faults(pid: int) -> int:
    """Minor page faults of process ``pid`` so far (``/proc/PID/stat``, field 10)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds")
async def test_the_agents_reads_reuse_their_memory(tmp_path: Path) -> None:
    """Once the agent has read a few MiB, 60 MiB more cost few page faults more, not one in
    every few pages read (the build before: 5.1k for these 18.6k pages, this one 1.0–1.3k)."""
    lines = [
        (f"ERROR {i % 7} db failed" if i % 20_000 == 0 else f"INFO GET /index/{i}.html 200 quietly")
        + "\n"
        for i in range(1 << 15)
    ]
    part = "".join(lines).encode()  # ~1.3 MB, two hits (n = 0 and 1)
    log = tmp_path / "app.log"
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=log), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            assert agent.proc is not None
            log.write_bytes(part * 4)  # a new file: read from its start
            await settled(tmp_path / "state.db", [log])
            before = _minor_faults(agent.proc.pid)
            with log.open("ab") as f:
                f.write(part * 60)
            await settled(tmp_path / "state.db", [log], within=60)
            extra = _minor_faults(agent.proc.pid) - before
            assert await agent.terminate() == 0
        finally:
            await agent.stop_quietly()
        assert [r.json()["commonLabels"]["n"] for r in rx.received] == ["0", "1"]
    counts = {
        json.loads(value)["labels"]["n"]: json.loads(value)["count"]
        for (value,) in query(tmp_path / "state.db", "SELECT value FROM alerts")
    }
    assert counts == {"0": 64, "1": 64}  # every line of the 64 parts was matched
    more = len(part) * 60 // os.sysconf("SC_PAGE_SIZE")
    assert extra < more // 8, f"{extra} page faults more for {more} pages more read"
