#!/usr/bin/env python3
"""A psycopg 3 client for the end-to-end tests, run inside a test cgroup from the
venv that `cargo xtask setup` makes (target/pyenv).

usage: pg_client.py CONNINFO STEPS_JSON

Steps, run in order on one connection (autocommit), as for pc-pgclient:
  {"query": SQL}                          no parameters: the simple query protocol
  {"prepared": SQL, "params": [..]}       server-side prepared statement (prepare=True),
                                          %s placeholders
  {"transaction": [SQL, ..], "commit": b} conn.transaction(); rolled back when commit is false
  {"copy_in": SQL, "data": TEXT}          COPY ... FROM STDIN
  {"copy_out": SQL}                       COPY ... TO STDOUT
  {"cancel": SQL}                         runs SQL in a thread, waits until a second
                                          connection sees it active, conn.cancel()
  {"expect_error": SQL, "sqlstate": CODE} the statement must fail with that SQLSTATE
  {"prepared_error": SQL, "params": [..], "sqlstate": CODE}
                                          as "prepared", and it must fail with that SQLSTATE
  {"backend_pid": true}                   conn.info.backend_pid (what BackendKeyData said)
                                          and SELECT pg_backend_pid()
  {"listen_notify": CHANNEL, "payload": P}
                                          LISTEN, NOTIFY with payload P, then waits (up to
                                          10 s) for the notification; its channel, payload, pid
  {"terminate_self": true}                a second connection calls pg_terminate_backend()
                                          on this connection's backend_pid; this connection
                                          must then fail (last step: the connection is gone)

Prints one JSON line: {"ok": true, "steps": [..]} or {"ok": false, "failed_step": i,
"error": .., "sqlstate": .., "steps": [..]} (exit status 1); exit status 2 for bad
arguments.
"""
import json
import sys
import threading
import time

try:
    import psycopg
    import psycopg.sql
except ImportError as e:  # the harness checks first; say what to do anyway
    print(f"pg_client.py: psycopg is not importable ({e}): run `cargo xtask setup`", file=sys.stderr)
    sys.exit(2)


class StepError(Exception):
    def __init__(self, message, sqlstate=None):
        super().__init__(message)
        self.sqlstate = sqlstate


def jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def rows_of(cur):
    if cur.description is None:
        return []
    return [[jsonable(v) for v in r] for r in cur.fetchall()]


def cancel(conn, conninfo, sql):
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    result = {}

    def run():
        try:
            conn.execute(sql)
            result["error"] = None
        except psycopg.Error as e:
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    with psycopg.connect(conninfo, autocommit=True) as watcher:
        deadline = time.monotonic() + 20
        while True:
            row = watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (pid,)
            ).fetchone()
            if row:
                break
            if time.monotonic() > deadline:
                raise StepError("the query never showed as active within 20 s")
            time.sleep(0.05)
    conn.cancel_safe()
    t.join(30)
    if t.is_alive():
        raise StepError("the query did not end within 30 s of the cancel")
    err = result.get("error")
    if err is None:
        raise StepError("the query finished; it was not cancelled")
    if err.sqlstate != "57014":
        raise StepError(f"expected SQLSTATE 57014 after the cancel, got {err.sqlstate}: {err}", err.sqlstate)
    return {"cancelled": True, "sqlstate": err.sqlstate, "backend_pid": pid}


def run_step(conn, conninfo, step):
    if not isinstance(step, dict):
        raise StepError(f"step {step!r} is not an object")
    if "query" in step:
        # No parameters: psycopg sends it with the simple query protocol, so several
        # statements may come back as several result sets; their rows are joined.
        cur = conn.execute(step["query"])
        rows = rows_of(cur)
        while cur.nextset():
            rows += rows_of(cur)
        return {"rows": rows}
    if "prepared" in step:
        cur = conn.execute(step["prepared"], step.get("params", []), prepare=True)
        return {"rows": rows_of(cur)}
    if "transaction" in step:
        commit = step.get("commit", True)
        affected = []

        class Rollback(Exception):
            pass

        try:
            with conn.transaction():
                for s in step["transaction"]:
                    affected.append(conn.execute(s).rowcount)
                if not commit:
                    raise Rollback()
        except Rollback:
            pass
        return {"affected": affected, "committed": commit}
    if "copy_in" in step:
        with conn.cursor() as cur:
            with cur.copy(step["copy_in"]) as cp:
                cp.write(step.get("data", ""))
            return {"rows": cur.rowcount}
    if "copy_out" in step:
        data = bytearray()
        with conn.cursor() as cur:
            with cur.copy(step["copy_out"]) as cp:
                for chunk in cp:
                    data += chunk
        return {"data": data.decode("utf-8", "replace")}
    if "cancel" in step:
        return cancel(conn, conninfo, step["cancel"])
    if "expect_error" in step:
        want = step.get("sqlstate", "")
        try:
            conn.execute(step["expect_error"])
        except psycopg.Error as e:
            if e.sqlstate == want:
                return {"sqlstate": e.sqlstate, "error": str(e)}
            raise StepError(f"expected SQLSTATE {want}, got {e.sqlstate}: {e}", e.sqlstate)
        raise StepError(f"expected SQLSTATE {want}, the statement succeeded")
    if "prepared_error" in step:
        want = step.get("sqlstate", "")
        try:
            conn.execute(step["prepared_error"], step.get("params", []), prepare=True)
        except psycopg.Error as e:
            if e.sqlstate == want:
                return {"sqlstate": e.sqlstate, "error": str(e)}
            raise StepError(f"expected SQLSTATE {want}, got {e.sqlstate}: {e}", e.sqlstate)
        raise StepError(f"expected SQLSTATE {want}, the statement succeeded")
    if "backend_pid" in step:
        server = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        return {"backend_pid": conn.info.backend_pid, "pg_backend_pid": server}
    if "listen_notify" in step:
        channel = step["listen_notify"]
        payload = step.get("payload", "")
        conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
        conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        for n in conn.notifies(timeout=10, stop_after=1):
            return {"channel": n.channel, "payload": n.payload, "pid": n.pid,
                    "backend_pid": conn.info.backend_pid}
        raise StepError("no notification arrived within 10 s")
    if "terminate_self" in step:
        pid = conn.info.backend_pid
        with psycopg.connect(conninfo, autocommit=True) as other:
            done = other.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        try:
            conn.execute("SELECT 1")
        except psycopg.Error as e:
            return {"terminated": done, "backend_pid": pid, "sqlstate": e.sqlstate,
                    "error": str(e), "closed": conn.closed or conn.broken}
        raise StepError(f"pg_terminate_backend({pid}) returned {done} and the connection still works")
    raise StepError(f"unknown step {step!r}")


def main():
    if len(sys.argv) != 3:
        print("usage: pg_client.py CONNINFO STEPS_JSON", file=sys.stderr)
        sys.exit(2)
    conninfo = sys.argv[1]
    try:
        steps = json.loads(sys.argv[2])
    except json.JSONDecodeError as e:
        print(f"pg_client.py: STEPS_JSON is not JSON: {e}", file=sys.stderr)
        sys.exit(2)
    if not isinstance(steps, list):
        print("pg_client.py: STEPS_JSON must be a JSON array", file=sys.stderr)
        sys.exit(2)
    done = []
    i = None
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for i, step in enumerate(steps):
                done.append(run_step(conn, conninfo, step))
    except (psycopg.Error, StepError) as e:
        print(json.dumps({
            "ok": False,
            "failed_step": i,
            "error": str(e),
            "sqlstate": getattr(e, "sqlstate", None),
            "steps": done,
        }), flush=True)
        sys.exit(1)
    print(json.dumps({"ok": True, "steps": done}), flush=True)


if __name__ == "__main__":
    main()
