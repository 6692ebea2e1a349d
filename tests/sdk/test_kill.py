"""kill -9 at every point of a three-step run through a real gateway: the side effect happens once.

The agent is a real process; the upstream counts POSTs. After the kill the run is resumed by a
fresh process with the same run id.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from counting import CountingUpstream
from support import Gateway

AGENT = Path(__file__).with_name("three_step_agent.py")


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[CountingUpstream]:
    server = CountingUpstream(hold_file=tmp_path / "release")
    server.start()
    yield server
    server.stop()


def agent(gateway: Gateway, store: str, run_id: str, upstream: str, kill_at: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(AGENT), store, run_id, gateway.admin, gateway.admin_token, gateway.listeners["proxy"],
         str(gateway.ca_file), upstream, kill_at],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("kill_at", ["before_post", "after_post", "after_checkpoint"])
def test_kill_then_resume_sees_the_side_effect_once(
    gateway: Gateway, counting: CountingUpstream, tmp_path: Path, kill_at: str
) -> None:
    assert counting.hold_file is not None
    counting.hold_file.touch()
    store, run_id = f"sqlite:///{tmp_path}/runs.db", f"run-{uuid.uuid4().hex[:8]}"
    first = agent(gateway, store, run_id, counting.url, kill_at)
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert len(counting.posts) == (0 if kill_at == "before_post" else 1)
    resumed = agent(gateway, store, run_id, counting.url, "none")
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"amount": 7, "charge": 1}
    assert len(counting.posts) == 1


def test_kill_during_the_call_resumes_with_the_stored_answer(
    gateway: Gateway, counting: CountingUpstream, tmp_path: Path
) -> None:
    """Killed while the upstream holds the POST: the gateway still receives and stores the answer
    (it sends a claimed request itself), so the resumed run replays it and the POST goes out once."""
    assert counting.hold_file is not None
    store, run_id = f"sqlite:///{tmp_path}/runs.db", f"run-{uuid.uuid4().hex[:8]}"
    first = agent(gateway, store, run_id, counting.url, "none")
    assert counting.arrived.wait(30)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    counting.hold_file.touch()
    resumed = agent(gateway, store, run_id, counting.url, "none")
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"amount": 7, "charge": 1}
    assert len(counting.posts) == 1
