#!/usr/bin/env python3
"""Runs modules of asyncpg's own test suite (the tests/ directory of its sdist,
which `cargo xtask setup` unpacks under target/) against an existing server and
prints one JSON line per test: {"test": ID, "outcome": ok|fail|error|skip|...}.
tests/tests/drivers.rs runs it direct and through the agent and compares the
outcomes test by test.

usage: asyncpg_suite.py SUITE_DIR MODULE...

asyncpg's test base uses the running server named by PGHOST, PGPORT, PGUSER,
PGDATABASE and PGPASSWORD instead of starting its own cluster.
"""
import json
import sys
import unittest


class JsonResult(unittest.TestResult):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lines = []

    def emit(self, test, outcome, detail=None):
        line = {"test": test.id(), "outcome": outcome}
        if detail:
            # The last line of a traceback: the exception and its message.
            line["detail"] = detail.strip().splitlines()[-1][:400]
        print(json.dumps(line, sort_keys=True), flush=True)

    def addSuccess(self, test):
        super().addSuccess(test)
        self.emit(test, "ok")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.emit(test, "fail", self.failures[-1][1])

    def addError(self, test, err):
        super().addError(test, err)
        self.emit(test, "error", self.errors[-1][1])

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.emit(test, "skip")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.emit(test, "expected_failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.emit(test, "unexpected_success")


def main():
    if len(sys.argv) < 3:
        print("usage: asyncpg_suite.py SUITE_DIR MODULE...", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, sys.argv[1])
    suite = unittest.defaultTestLoader.loadTestsFromNames([f"tests.{m}" for m in sys.argv[2:]])
    result = JsonResult()
    suite.run(result)
    print(json.dumps({"summary": True, "ran": result.testsRun, "failures": len(result.failures), "errors": len(result.errors), "skipped": len(result.skipped)}), flush=True)


if __name__ == "__main__":
    main()
