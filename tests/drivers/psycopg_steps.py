#!/usr/bin/env python3
"""Driver conformance scenario for psycopg 3 (tests/tests/drivers.rs runs it
direct and through the agent and compares the output line by line).

The connection comes from the libpq environment (PGHOST, PGPORT, PGUSER,
PGDATABASE, PGPASSWORD); DRIVERS_CA names the CA that signed the server's and
the agent's certificates (for the TLS step).

Prints one JSON line per step: {"step": NAME, "ok": true, ...} with values that
hold on every run (pids and OIDs are replaced by comparisons), or {"step":
NAME, "ok": false, "error": .., "sqlstate": ..}. A failed step does not stop the
run; a broken connection is replaced for the next step.
"""
import json
import os
import sys
import threading
import time

try:
    import psycopg
    from psycopg import pq
    from psycopg.types.composite import CompositeInfo, register_composite
    from psycopg.types.enum import EnumInfo, register_enum
except ImportError as e:
    print(f"psycopg_steps.py: psycopg is not importable ({e}): run `cargo xtask setup`", file=sys.stderr)
    sys.exit(2)

DRIVER = "psycopg"
T = "drv_psycopg_items"
MOOD = "drv_psycopg_mood"
PAIR = "drv_psycopg_pair"
CHANNEL = "drv_psycopg_chan"


class StepFailed(Exception):
    pass


def jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(v).hex()
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return str(v)


def connect(**kw):
    kw.setdefault("sslmode", "disable")
    return psycopg.connect("", autocommit=True, **kw)


def wait_active(pid):
    with connect() as w:
        deadline = time.monotonic() + 20
        while True:
            if w.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (pid,)
            ).fetchone():
                return
            if time.monotonic() > deadline:
                raise StepFailed("the query never showed as active within 20 s")
            time.sleep(0.05)


def step_connect(conn):
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    info = conn.info
    return {
        "user": info.user,
        "dbname": info.dbname,
        "server_version_major": info.server_version // 10000,
        "driver_pid_matches_pg_backend_pid": info.backend_pid == pid,
        "parameters": {
            p: info.parameter_status(p)
            for p in [
                "server_encoding",
                "client_encoding",
                "DateStyle",
                "integer_datetimes",
                "standard_conforming_strings",
                "TimeZone",
            ]
        },
    }


def step_setup(conn):
    conn.execute(f"DROP TABLE IF EXISTS {T}")
    conn.execute(f"DROP TYPE IF EXISTS {PAIR}")
    conn.execute(f"DROP TYPE IF EXISTS {MOOD}")
    conn.execute(f"CREATE TYPE {MOOD} AS ENUM ('sad', 'ok', 'happy')")
    conn.execute(f"CREATE TYPE {PAIR} AS (label text, amount numeric(10,2))")
    conn.execute(
        f"CREATE TABLE {T} (id int PRIMARY KEY, name text NOT NULL, mood {MOOD}, "
        f"pair {PAIR}, data bytea, CONSTRAINT {T}_name_short CHECK (length(name) < 40))"
    )
    return {"created": [T, MOOD, PAIR]}


def step_simple_query(conn):
    # No parameters: the simple query protocol, two result sets in one message.
    cur = conn.execute("SELECT 1 AS a, 'one' AS b; SELECT generate_series(1, 3) AS n")
    sets = []
    while True:
        sets.append({"columns": [c.name for c in cur.description], "rows": jsonable(cur.fetchall())})
        if not cur.nextset():
            break
    return {"result_sets": sets, "protocol": "simple"}


def step_extended_query(conn):
    params = [42, "text ü", "12.50", b"\x00\x01\xff", '{"k": [1, 2]}', [1, 2, 3], "2026-01-02T03:04:05+00", None]
    sql = "SELECT %s::int, %s::text, %s::numeric, %s::bytea, %s::jsonb, %s::int[], %s::timestamptz, %s::text"
    text_row = conn.execute(sql, params).fetchone()
    binary_row = conn.cursor(binary=True).execute(sql, params).fetchone()
    return {"text": jsonable(text_row), "binary": jsonable(binary_row)}


def step_executemany(conn):
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {T} (id, name, mood) VALUES (%s, %s, %s::{MOOD})",
            [(i, f"item {i}", ["sad", "ok", "happy"][i % 3]) for i in range(1, 11)],
        )
    return {"count": conn.execute(f"SELECT count(*) FROM {T}").fetchone()[0]}


def step_pipeline(conn):
    with conn.pipeline() as p:
        c1 = conn.execute(f"INSERT INTO {T} (id, name) VALUES (%s, %s)", (100, "piped"))
        c2 = conn.execute(f"SELECT name FROM {T} WHERE id = %s", (100,))
        c3 = conn.execute(f"UPDATE {T} SET name = %s WHERE id = %s", ("piped 2", 100))
        p.sync()
        first = {"inserted": c1.rowcount, "selected": jsonable(c2.fetchall()), "updated": c3.rowcount}
    aborted = None
    try:
        with conn.pipeline() as p:
            conn.execute("SELECT 1 / %s", (0,))
            conn.execute(f"DELETE FROM {T} WHERE id = %s", (100,))
            p.sync()
    except psycopg.Error as e:
        aborted = {"sqlstate": e.sqlstate, "error": type(e).__name__}
    still = conn.execute(f"SELECT name FROM {T} WHERE id = 100").fetchone()
    return {"first": first, "aborted": aborted, "row_after_aborted_pipeline": jsonable(still)}


def step_copy_text(conn):
    with conn.cursor() as cur:
        with cur.copy(f"COPY {T} (id, name) FROM STDIN") as cp:
            cp.write("200\tcopied a\n201\tcopied b\n202\twith \\t tab\n")
        copied_in = cur.rowcount
        out = bytearray()
        with cur.copy(f"COPY (SELECT id, name FROM {T} WHERE id >= 200 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)") as cp:
            for chunk in cp:
                out += chunk
    return {"copied_in": copied_in, "out": out.decode()}


def step_copy_binary(conn):
    with conn.cursor() as cur:
        with cur.copy(f"COPY {T} (id, name, data) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "text", "bytea"])
            for i in range(300, 305):
                cp.write_row((i, f"binary {i}", bytes([i % 256, 0, 255])))
        copied_in = cur.rowcount
        raw = bytearray()
        with cur.copy(f"COPY (SELECT id, name, data FROM {T} WHERE id >= 300 ORDER BY id) TO STDOUT (FORMAT BINARY)") as cp:
            for chunk in cp:
                raw += chunk
        with cur.copy(f"COPY (SELECT id, name, data FROM {T} WHERE id >= 300 ORDER BY id) TO STDOUT (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "text", "bytea"])
            rows = list(cp.rows())
    import hashlib

    return {"copied_in": copied_in, "out_bytes": len(raw), "out_sha256": hashlib.sha256(raw).hexdigest(), "rows": jsonable(rows)}


def step_cursors(conn):
    with conn.transaction():
        cur = conn.cursor("drv_named", scrollable=True)
        cur.execute(f"SELECT id, name FROM {T} ORDER BY id")
        first = cur.fetchmany(3)
        cur.scroll(2)
        after_scroll = cur.fetchone()
        cur.scroll(0, mode="absolute")
        again = cur.fetchone()
        cur.close()
        conn.execute(f"DECLARE drv_sql CURSOR FOR SELECT id FROM {T} ORDER BY id")
        fetched = conn.execute("FETCH 2 FROM drv_sql").fetchall()
        conn.execute("MOVE FORWARD 2 IN drv_sql")
        moved = conn.execute("FETCH NEXT FROM drv_sql").fetchall()
        conn.execute("CLOSE drv_sql")
    return {
        "named_first": jsonable(first),
        "named_after_scroll": jsonable(after_scroll),
        "named_absolute_0": jsonable(again),
        "sql_fetch": jsonable(fetched),
        "sql_after_move": jsonable(moved),
    }


def step_listen_notify(conn):
    with connect() as listener, connect() as notifier:
        listener.execute(f"LISTEN {CHANNEL}")
        npid_sql = notifier.execute("SELECT pg_backend_pid()").fetchone()[0]
        npid = notifier.info.backend_pid
        notifier.execute(f"NOTIFY {CHANNEL}, 'hello'")
        notifier.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "via pg_notify"))
        listener.execute(f"NOTIFY {CHANNEL}, 'to myself'")
        got = list(listener.notifies(timeout=10, stop_after=3))
        got.sort(key=lambda n: n.payload)
        own = listener.info.backend_pid
        own_sql = listener.execute("SELECT pg_backend_pid()").fetchone()[0]
        listener.execute(f"UNLISTEN {CHANNEL}")
    out = []
    for n in got:
        mine = n.payload == "to myself"
        out.append({
            "channel": n.channel,
            "payload": n.payload,
            "pid_matches_sender_pg_backend_pid": n.pid == (own_sql if mine else npid_sql),
            "pid_matches_sender_driver_pid": n.pid == (own if mine else npid),
        })
    return {"notifications": out}


def step_cancel(conn):
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    result = {}

    def run():
        try:
            conn.execute("SELECT pg_sleep(30)")
            result["error"] = None
        except psycopg.Error as e:
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    wait_active(pid)
    conn.cancel_safe()
    t.join(30)
    if t.is_alive():
        raise StepFailed("the query did not end within 30 s of the cancel")
    err = result.get("error")
    after = conn.execute("SELECT 'usable'").fetchone()[0]
    return {"sqlstate": getattr(err, "sqlstate", None), "after": after}


def step_large_objects(conn):
    # psycopg 3 has no large-object API of its own: the server's functions, by SQL.
    with conn.transaction():
        oid = conn.execute("SELECT lo_from_bytea(0, %s)", (b"hello large object",)).fetchone()[0]
        whole = conn.execute("SELECT lo_get(%s)", (oid,)).fetchone()[0]
        fd = conn.execute("SELECT lo_open(%s, %s)", (oid, 0x20000 | 0x40000)).fetchone()[0]
        conn.execute("SELECT lo_lseek(%s, 6, 0)", (fd,))
        conn.execute("SELECT lowrite(%s, %s)", (fd, b"LARGE"))
        conn.execute("SELECT lo_lseek(%s, 0, 0)", (fd,))
        read = conn.execute("SELECT loread(%s, 100)", (fd,)).fetchone()[0]
        conn.execute("SELECT lo_close(%s)", (fd,))
    gone = conn.execute("SELECT lo_unlink(%s)", (oid,)).fetchone()[0]
    return {"oid_is_positive": oid > 0, "whole": bytes(whole).decode(), "after_write": bytes(read).decode(), "unlinked": gone}


def step_prepared_by_name(conn):
    sql = f"SELECT name FROM {T} WHERE id = %s"
    a = conn.execute(sql, (1,), prepare=True).fetchone()
    name = conn.execute(
        "SELECT name FROM pg_prepared_statements WHERE statement = %s AND NOT from_sql",
        (f"SELECT name FROM {T} WHERE id = $1",),
    ).fetchone()
    if name is None:
        raise StepFailed("no protocol-level prepared statement on the server")
    by_sql = conn.execute(f'EXECUTE "{name[0]}"(2)').fetchall()
    conn.execute(f"PREPARE drv_sql_prepared(int) AS SELECT name FROM {T} WHERE id = $1")
    sql_prepared = conn.execute("EXECUTE drv_sql_prepared(3)").fetchall()
    conn.execute("DEALLOCATE drv_sql_prepared")
    left = conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = 'drv_sql_prepared'").fetchone()[0]
    return {"protocol_prepared": jsonable(a), "execute_by_sql": jsonable(by_sql), "sql_prepared": jsonable(sql_prepared), "left_after_deallocate": left}


def step_types(conn):
    enum = EnumInfo.fetch(conn, MOOD)
    comp = CompositeInfo.fetch(conn, PAIR)
    register_enum(enum, conn)
    register_composite(comp, conn)
    conn.execute(f"UPDATE {T} SET pair = ROW('x', 1.5)::{PAIR} WHERE id = 1")
    row = conn.execute(f"SELECT mood, pair, (pair).label FROM {T} WHERE id = 1").fetchone()
    by_param = conn.execute(f"SELECT %s::{PAIR}", (comp.python_type("y", 2),)).fetchone()[0]
    return {
        "enum_labels": list(enum.labels),
        "composite_fields": [list(x) for x in zip(comp.field_names, [str(t) for t in comp.field_types])],
        "row": {"mood": str(row[0].name), "pair": [row[1].label, str(row[1].amount)], "label": row[2]},
        "composite_param": [by_param.label, str(by_param.amount)],
    }


def step_transactions(conn):
    with conn.transaction():
        conn.execute(f"INSERT INTO {T} (id, name) VALUES (400, 'outer')")
        try:
            with conn.transaction():
                conn.execute(f"INSERT INTO {T} (id, name) VALUES (401, 'inner')")
                conn.execute(f"INSERT INTO {T} (id, name) VALUES (400, 'duplicate')")
        except psycopg.errors.UniqueViolation:
            pass
        status_inside = conn.info.transaction_status.name
    try:
        with conn.transaction():
            conn.execute(f"INSERT INTO {T} (id, name) VALUES (402, 'rolled back')")
            raise psycopg.Rollback()
    except psycopg.Rollback:
        pass
    conn.execute("BEGIN")
    conn.execute(f"INSERT INTO {T} (id, name) VALUES (403, 'sql savepoint')")
    conn.execute("SAVEPOINT s1")
    conn.execute(f"DELETE FROM {T} WHERE id = 403")
    conn.execute("ROLLBACK TO SAVEPOINT s1")
    conn.execute("RELEASE SAVEPOINT s1")
    conn.execute("COMMIT")
    rows = conn.execute(f"SELECT id, name FROM {T} WHERE id BETWEEN 400 AND 403 ORDER BY id").fetchall()
    return {"rows": jsonable(rows), "status_inside": status_inside, "status_after": conn.info.transaction_status.name}


def step_errors(conn):
    out = []
    for sql in [
        f"INSERT INTO {T} (id, name) VALUES (1, 'again')",
        f"INSERT INTO {T} (id, name) VALUES (999, repeat('x', 50))",
        "SELECT * FROM drv_no_such_table",
        "SELECT 1/0",
        "SELECT 'abc'::int",
    ]:
        try:
            conn.execute(sql)
            out.append({"sql": sql, "error": None})
        except psycopg.Error as e:
            d = e.diag
            out.append({
                "sql": sql,
                "sqlstate": e.sqlstate,
                "severity": d.severity_nonlocalized,
                "message": d.message_primary,
                "detail": d.message_detail,
                "constraint": d.constraint_name,
                "table": d.table_name,
                "position": d.statement_position,
            })
    out.append({"after": conn.execute("SELECT 'usable'").fetchone()[0]})
    return {"errors": out}


def step_syntax_error(conn):
    try:
        conn.execute("SELEC 1")
        return {"error": None}
    except psycopg.Error as e:
        return {"sqlstate": e.sqlstate, "message": e.diag.message_primary, "position": e.diag.statement_position}


def step_notice(conn):
    got = []
    conn.add_notice_handler(lambda d: got.append({"severity": d.severity_nonlocalized, "sqlstate": d.sqlstate, "message": d.message_primary}))
    conn.execute("DO $$BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END$$")
    conn.execute("SET client_min_messages = notice")
    conn.execute(f"DROP TABLE IF EXISTS drv_psycopg_absent")
    return {"notices": got}


def step_tls(conn):
    ca = os.environ["DRIVERS_CA"]
    with connect(sslmode="verify-full", sslrootcert=ca) as c:
        server = c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
        return {"client_ssl_in_use": c.pgconn.ssl_in_use, "server_sees_ssl": server, "query": c.execute("SELECT 'over tls'").fetchone()[0]}


STEPS = [
    ("connect", step_connect),
    ("setup", step_setup),
    ("simple_query", step_simple_query),
    ("extended_query", step_extended_query),
    ("executemany", step_executemany),
    ("pipeline", step_pipeline),
    ("copy_text", step_copy_text),
    ("copy_binary", step_copy_binary),
    ("cursors", step_cursors),
    ("listen_notify", step_listen_notify),
    ("cancel", step_cancel),
    ("large_objects", step_large_objects),
    ("prepared_by_name", step_prepared_by_name),
    ("types", step_types),
    ("transactions", step_transactions),
    ("errors", step_errors),
    ("syntax_error", step_syntax_error),
    ("notice", step_notice),
    ("tls", step_tls),
]


def main():
    failed = 0
    conn = None
    for name, fn in STEPS:
        try:
            if conn is None or conn.closed or conn.info.transaction_status == pq.TransactionStatus.UNKNOWN:
                conn = connect()
            line = {"step": name, "ok": True, **fn(conn)}
        except (psycopg.Error, StepFailed, OSError) as e:
            failed += 1
            line = {"step": name, "ok": False, "error": f"{type(e).__name__}: {e}".strip(), "sqlstate": getattr(e, "sqlstate", None)}
            if conn is not None and not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE:
                try:
                    conn.rollback()
                except psycopg.Error:
                    conn = None
        print(json.dumps({"driver": DRIVER, **line}, sort_keys=True, default=str), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
