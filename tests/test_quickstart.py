"""The README's quickstart, run as written (issue 9).

The ```sh blocks of the README's "Quickstart" section are extracted and run, in order, as
one bash script (a newcomer's terminal): embedded broker -> produce -> run -> consume ->
look -> SIGINT. Verbatim, except that the broker's port 9092 becomes a free port. The
script runs in a temporary folder (``topologies/`` linked in, so the README's relative
paths hold) with ``.venv/bin`` first on ``PATH``; everything it starts shares its process
group, which is killed at the end whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from streamimg.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_PORT = "9092"
FRAMES = 24  # the README's `--limit 24`
SCRIPT_TIMEOUT_S = 840  # the daemon alone needs 10-20 s to start; generous for a loaded box


def quickstart_blocks(text: str) -> list[str]:
    """The bodies of the ```sh blocks of the README's ``## Quickstart`` section, in order."""
    section = re.search(r"^## Quickstart\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "README.md has no '## Quickstart' section"
    return re.findall(r"^```sh\n(.*?)^```", section.group(1), re.S | re.M)


def test_quickstart_section_walks_broker_to_consume():
    blocks = quickstart_blocks(README.read_text())
    script = "\n".join(blocks)
    steps = ["streamimg broker --port 9092", "streamimg produce", "streamimg run",
             "streamimg consume", "kill -INT"]
    positions = [script.find(step) for step in steps]
    assert -1 not in positions, f"a step is missing from the quickstart: {steps}, {positions}"
    assert positions == sorted(positions), "the quickstart's steps are out of order"
    # Every command that talks to the broker names it, so the test's port reaches all of them.
    commands = re.findall(r"^streamimg (?:produce|run|consume) .*$",
                          script.replace("\\\n", " "), re.M)
    assert len(commands) >= 3, commands
    for command in commands:
        assert "--bootstrap 127.0.0.1:9092" in command, command


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever the script left running (the broker's Tansu dies with its parent)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.timeout(SCRIPT_TIMEOUT_S + 120)
def test_quickstart_runs_verbatim(tmp_path):
    port = str(free_port())
    blocks = quickstart_blocks(README.read_text())
    script = tmp_path / "quickstart.sh"
    script.write_text("set -e\n" + "\n".join(b.replace(README_PORT, port) for b in blocks))
    (tmp_path / "topologies").symlink_to(ROOT / "topologies")
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "quickstart.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        code = proc.wait(timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        _kill_group(proc.pid)
        proc.wait(timeout=30)
    out_dir = tmp_path / "quickstart"

    def report() -> str:
        logs = [log, out_dir / "run.log", out_dir / "broker.log"]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-6000:]}"
                         for p in logs if p.exists())

    assert code == 0, f"the quickstart script exited with {code}\n{report()}"
    output = log.read_text(errors="replace")
    assert f'"frames": {FRAMES}' in output, report()  # produce's summary line
    assert "streamimg run exited with code 0" in output, report()
    assert "streamimg broker exited with code 0" in output, report()

    stats = json.loads((out_dir / "stats.json").read_text())
    assert stats["frames_out"] == FRAMES and stats["dead_letters"] == 0, stats

    analytics = [json.loads(line) for line in
                 (out_dir / "analytics.jsonl").read_text().splitlines()]
    records = [a["value"] for a in analytics]
    assert sorted(r["frame"] for r in records) == list(range(FRAMES)), report()
    assert sorted(r["source"]["offset"] for r in records) == list(range(FRAMES))
    assert {r["stream"] for r in records} == {"bigbuckbunny"}
    assert all(len(r["palette"]["colors"]) == 5 and "faces" in r for r in records)

    frames = [json.loads(line) for line in
              (out_dir / "frames.jsonl").read_text().splitlines()]
    assert len(frames) == FRAMES, report()
    files = sorted((out_dir / "frames").iterdir())
    assert len(files) == FRAMES, [f.name for f in files]
    with Image.open(files[0]) as first:
        assert first.width == 1280 and first.height > 720  # 720p plus the palette strip
