"""Checkpoint overhead per durable step, side by side in one run (not a test).

    .venv/bin/python bench/sdk_steps.py [--steps 2000] [--rounds 5] [--no-dbos]

- floor:   one INSERT and COMMIT per step on SQLite (WAL, synchronous=NORMAL) — the physical minimum
           for a step result that survives kill -9;
- wardgate: ``Run.step`` on the SQLite checkpoint store (same settings), and ``await Run.astep``;
- DBOS:    DBOS Transact steps in one workflow on SQLite, run in the benchmark's own environment
           (bench/.venv-dbos, created on first use with ``pip install dbos``; not a project dependency).

Each round runs every contender once, in turn, on a fresh file, for the same number of trivial
steps returning a small dict; the best round of each counts (least disturbed by other load).
Prints microseconds per step and the ratios to the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
DBOS_VENV = HERE / ".venv-dbos"


def floor(folder: Path, steps: int) -> float:
    conn = sqlite3.connect(folder / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("CREATE TABLE steps (run_id TEXT, position INTEGER, output TEXT, PRIMARY KEY (run_id, position))"
                 " WITHOUT ROWID")
    started = time.perf_counter()
    for i in range(steps):
        conn.execute("INSERT INTO steps VALUES (?, ?, ?)", ("run", i, json.dumps({"i": i})))
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed / steps


def step_body(i: int) -> dict:
    return {"i": i}


def wardgate_sync(folder: Path, steps: int) -> float:
    from wardgate.sdk.runs import Run

    with Run(f"sqlite:///{folder}/runs.db", "bench") as run:
        started = time.perf_counter()
        for i in range(steps):
            run.step(step_body, i, name="body")
        elapsed = time.perf_counter() - started
    return elapsed / steps


def wardgate_async(folder: Path, steps: int) -> float:
    from wardgate.sdk.runs import Run

    async def main() -> float:
        async with Run(f"sqlite:///{folder}/aruns.db", "bench") as run:
            started = time.perf_counter()
            for i in range(steps):
                await run.astep(step_body, i, name="body")
            return time.perf_counter() - started

    return asyncio.run(main()) / steps


DBOS_SCRIPT = """
import sys, time
from dbos import DBOS
steps, db = int(sys.argv[1]), sys.argv[2]
DBOS(config={"name": "wardgate-bench", "system_database_url": f"sqlite:///{db}", "log_level": "ERROR",
             "run_admin_server": False})
DBOS.launch()

@DBOS.step()
def body(i):
    return {"i": i}

@DBOS.workflow()
def flow(n):
    started = time.perf_counter()
    for i in range(n):
        body(i)
    return time.perf_counter() - started

print((flow(steps)) / steps)
DBOS.destroy()
"""


def ensure_dbos() -> Path | None:
    python = DBOS_VENV / "bin" / "python"
    if not python.exists():
        print("creating bench/.venv-dbos and installing dbos (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(DBOS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "dbos"], check=True)
    done = subprocess.run([str(python), "-c", "import dbos"], capture_output=True)
    return python if done.returncode == 0 else None


def dbos(folder: Path, steps: int, python: Path) -> float:
    done = subprocess.run([str(python), "-c", DBOS_SCRIPT, str(steps), str(folder / "dbos.sqlite")],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"DBOS run failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def side_by_side(measures: dict[str, Callable[[Path, int], float]], steps: int, rounds: int) -> dict[str, float]:
    """Each round runs every contender once, in turn, so background load hits them alike; best round wins."""
    results: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            with tempfile.TemporaryDirectory(prefix="wardgate-bench-") as folder:
                results[name].append(measure(Path(folder), steps))
    return {name: min(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-dbos", action="store_true")
    args = parser.parse_args()
    measures: dict[str, Callable[[Path, int], float]] = {
        "floor (INSERT+COMMIT)": floor,
        "wardgate Run.step": wardgate_sync,
        "wardgate Run.astep": wardgate_async,
    }
    if not args.no_dbos:
        python = ensure_dbos()
        if python is None:
            print("DBOS could not be imported from bench/.venv-dbos; leaving it out", file=sys.stderr)
        else:
            measures["DBOS Transact step"] = lambda folder, steps: dbos(folder, steps, python)
    results = side_by_side(measures, args.steps, args.rounds)
    base = results["floor (INSERT+COMMIT)"]
    print(f"{args.steps} steps per round, best of {args.rounds} rounds, SQLite WAL synchronous=NORMAL")
    print(f"{'':24} {'us/step':>9} {'x floor':>8}")
    for name, seconds in results.items():
        print(f"{name:24} {seconds * 1e6:9.1f} {seconds / base:8.2f}")
    if "DBOS Transact step" in results:
        ratio = results["DBOS Transact step"] / results["wardgate Run.step"]
        print(f"DBOS Transact / wardgate Run.step: {ratio:.1f}x")


if __name__ == "__main__":
    main()
