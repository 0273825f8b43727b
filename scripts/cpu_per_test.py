"""What each test costs in CPU, its subprocesses included: the suite is CPU-bound on two cores, so a test's
wall time (pytest --durations) says little about what it takes from the others running beside it.

As a pytest plugin, it writes one JSON line per test ({"id", "cpu", "wall", "start"}) to
$CPU_PER_TEST_DIR/<xdist worker>.jsonl; CPU is this process's and its waited-for children's (a server
that a test SIGKILLs and never waits for is not counted). A module-scoped fixture's work is charged to the
module's first test (its setup) and last (its teardown); session-scoped servers, reaped at the end, to none.
Run as a script, it sums those lines.

    PYTHONPATH=scripts CPU_PER_TEST_DIR=/tmp/cpu .venv/bin/python -m pytest -p cpu_per_test ...
    python scripts/cpu_per_test.py /tmp/cpu [--top 30]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

import pytest


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, start = _cpu_s(), time.time()
    yield
    folder = Path(os.environ.get("CPU_PER_TEST_DIR", "."))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.jsonl"
    with out.open("a") as f:
        f.write(json.dumps({"id": item.nodeid, "cpu": _cpu_s() - cpu, "wall": time.time() - start,
                            "start": start}) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="the CPU_PER_TEST_DIR of a run")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args(argv)
    rows = [json.loads(line) for path in sorted(args.folder.glob("*.jsonl")) for line in path.open()]
    by_file: dict[str, float] = defaultdict(float)
    for r in rows:
        by_file[r["id"].split("::")[0]] += r["cpu"]
    print(f"{len(rows)} tests: {sum(r['cpu'] for r in rows) / 60:.1f} CPU-min, "
          f"{sum(r['wall'] for r in rows) / 60:.1f} min of test wall time summed")
    print("by file, CPU s:", ", ".join(f"{f.removeprefix('tests/')} {s:.0f}"
                                       for f, s in sorted(by_file.items(), key=lambda x: -x[1])[:12]))
    for r in sorted(rows, key=lambda r: -r["cpu"])[:args.top]:
        print(f"{r['cpu']:7.1f} CPU s {r['wall']:7.1f} s  {r['id']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
