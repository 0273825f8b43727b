"""What the test suite cost, from pytest's JUnit XML: its wall time beside the 20-minute budget and the
ten slowest tests (setup, call and teardown together). `.ci/run` prints it after every run, so the
budget is visible on each submission; it never fails a run by time (timings on a shared 2-core
machine are noisy), and it ends with the plain 'N passed, N failed' line of the run it read.

    python scripts/suite_time.py JUNIT.xml [--slowest 10]
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET

BUDGET_S = 20 * 60  # the whole suite, slow tests included, on a 2-core machine (BENCHMARKS.md 'Tests')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("junit", help="the file pytest wrote with --junitxml")
    ap.add_argument("--slowest", type=int, default=10)
    args = ap.parse_args(argv)
    try:
        root = ET.parse(args.junit).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"[suite] no timing to report: {args.junit} could not be read ({e})", file=sys.stderr)
        return 1
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    wall = sum(float(s.get("time", 0)) for s in suites)
    count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    cases = [(float(c.get("time", 0)), f"{c.get('classname', '')}::{c.get('name', '')}")
             for s in suites for c in s.iter("testcase")]
    share = wall / BUDGET_S
    print(f"[suite] pytest wall time {wall / 60:.1f} min of the {BUDGET_S // 60}-minute budget ({share:.0%}); "
          f"the {args.slowest} slowest tests:")
    for seconds, name in sorted(cases, reverse=True)[:args.slowest]:
        print(f"[suite] {seconds:8.1f} s  {name}")
    failed = count["failures"] + count["errors"]
    passed = count["tests"] - failed - count["skipped"]
    print(f"{passed} passed, {failed} failed" + (f", {count['skipped']} skipped" if count["skipped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
