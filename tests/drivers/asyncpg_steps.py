#!/usr/bin/env python3
"""Driver conformance scenario for asyncpg (tests/tests/drivers.rs runs it direct
and through the agent and compares the output line by line).

The connection comes from the libpq environment (PGHOST, PGPORT, PGUSER,
PGDATABASE, PGPASSWORD), which asyncpg reads; DRIVERS_CA names the CA that
signed the server's and the agent's certificates (for the TLS step).

Prints one JSON line per step: {"step": NAME, "ok": true, ...} with values that
hold on every run (pids and OIDs are replaced by comparisons), or {"step":
NAME, "ok": false, "error": .., "sqlstate": ..}. A failed step does not stop the
run; a broken connection is replaced for the next step.
"""
import asyncio
import hashlib
import io
import json
import os
import ssl
import sys

try:
    import asyncpg
except ImportError as e:
    print(f"asyncpg_steps.py: asyncpg is not importable ({e}): run `cargo xtask setup`", file=sys.stderr)
    sys.exit(2)

DRIVER = "asyncpg"
T = "drv_asyncpg_items"
MOOD = "drv_asyncpg_mood"
PAIR = "drv_asyncpg_pair"
POSINT = "drv_asyncpg_posint"
CHANNEL = "drv_asyncpg_chan"


class StepFailed(Exception):
    pass


def jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(v).hex()
    if isinstance(v, asyncpg.Record):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return str(v)


async def connect(**kw):
    kw.setdefault("ssl", False)
    return await asyncpg.connect(**kw)


async def wait_active(pid):
    w = await connect()
    try:
        for _ in range(400):
            if await w.fetchval("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", pid):
                return
            await asyncio.sleep(0.05)
        raise StepFailed("the query never showed as active within 20 s")
    finally:
        await w.close()


async def step_connect(conn):
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    s = conn.get_settings()
    return {
        "server_version_major": conn.get_server_version().major,
        "user": await conn.fetchval("SELECT current_user"),
        "driver_pid_matches_pg_backend_pid": conn.get_server_pid() == pid,
        "parameters": {
            p: getattr(s, p, None)
            for p in ["server_encoding", "client_encoding", "DateStyle", "integer_datetimes", "standard_conforming_strings", "TimeZone"]
        },
    }


async def step_setup(conn):
    for sql in [
        f"DROP TABLE IF EXISTS {T}",
        f"DROP TYPE IF EXISTS {PAIR}",
        f"DROP TYPE IF EXISTS {MOOD}",
        f"CREATE TYPE {MOOD} AS ENUM ('sad', 'ok', 'happy')",
        f"CREATE TYPE {PAIR} AS (label text, amount numeric(10,2))",
        f"CREATE TABLE {T} (id int PRIMARY KEY, name text NOT NULL, mood {MOOD}, pair {PAIR}, data bytea, "
        f"CONSTRAINT {T}_name_short CHECK (length(name) < 40))",
    ]:
        await conn.execute(sql)
    return {"created": [T, MOOD, PAIR]}


async def step_simple_query(conn):
    # execute() without arguments uses the simple query protocol: several statements.
    status = await conn.execute(f"INSERT INTO {T} (id, name) VALUES (1, 'one'); INSERT INTO {T} (id, name) VALUES (2, 'two'); SELECT 1")
    rows = await conn.fetch(f"SELECT id, name FROM {T} ORDER BY id")
    return {"last_status": status, "rows": jsonable(rows)}


async def step_extended_query(conn):
    import datetime
    import decimal

    row = await conn.fetchrow(
        "SELECT $1::int AS i, $2::text AS t, $3::numeric AS n, $4::bytea AS b, $5::jsonb AS j, $6::int[] AS a, "
        "$7::timestamptz AS ts, $8::text AS nothing, $9::float8 AS f, $10::bool AS yes",
        42, "text ü", decimal.Decimal("12.50"), b"\x00\x01\xff", '{"k": [1, 2]}', [1, 2, 3],
        datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), None, 1.5, True,
    )
    return {"row": jsonable(row)}


async def step_executemany(conn):
    # asyncpg sends every Bind/Execute of executemany before one Sync: a pipeline.
    await conn.executemany(
        f"INSERT INTO {T} (id, name, mood) VALUES ($1, $2, $3)",
        [(i, f"item {i}", ["sad", "ok", "happy"][i % 3]) for i in range(3, 13)],
    )
    failed = None
    try:
        await conn.executemany(f"INSERT INTO {T} (id, name) VALUES ($1, $2)", [(100, "a"), (3, "dup"), (101, "b")])
    except asyncpg.PostgresError as e:
        failed = e.sqlstate
    left = await conn.fetchval(f"SELECT count(*) FROM {T} WHERE id IN (100, 101)")
    return {"count": await conn.fetchval(f"SELECT count(*) FROM {T}"), "failed_batch_sqlstate": failed, "rows_of_failed_batch": left}


async def step_copy_text(conn):
    res = await conn.copy_to_table(T, source=io.BytesIO(b"200\tcopied a\n201\tcopied b\n"), columns=["id", "name"])
    csv = await conn.copy_to_table(T, source=io.BytesIO(b"id,name\n202,from csv\n"), columns=["id", "name"], format="csv", header=True)
    out = io.BytesIO()
    out_status = await conn.copy_from_query(f"SELECT id, name FROM {T} WHERE id >= 200 ORDER BY id", output=out, format="csv", header=True)
    tout = io.BytesIO()
    await conn.copy_from_table(T, output=tout, columns=["id", "name"])
    return {"copy_in": res, "copy_in_csv": csv, "copy_out": out_status, "out": out.getvalue().decode(), "table_out_lines": len(tout.getvalue().splitlines())}


async def step_copy_binary(conn):
    # copy_records_to_table sends COPY ... FROM STDIN (FORMAT binary).
    res = await conn.copy_records_to_table(T, records=[(i, f"binary {i}", bytes([i % 256, 0, 255])) for i in range(300, 305)], columns=["id", "name", "data"])
    out = io.BytesIO()
    await conn.copy_from_query(f"SELECT id, name, data FROM {T} WHERE id >= 300 ORDER BY id", output=out, format="binary")
    raw = out.getvalue()
    # The binary stream back in, through COPY ... FROM STDIN (FORMAT binary) from bytes.
    await conn.execute("CREATE TEMP TABLE drv_asyncpg_copy (id int, name text, data bytea)")
    back = await conn.copy_to_table("drv_asyncpg_copy", source=io.BytesIO(raw), format="binary")
    same = await conn.fetchval(f"SELECT count(*) FROM drv_asyncpg_copy c JOIN {T} t USING (id, name, data)")
    await conn.execute("DROP TABLE drv_asyncpg_copy")
    return {"copy_in": res, "out_bytes": len(raw), "out_sha256": hashlib.sha256(raw).hexdigest(), "back": back, "back_rows_equal": same}


async def step_cursors(conn):
    async with conn.transaction():
        it = [r["id"] async for r in conn.cursor(f"SELECT id FROM {T} WHERE id < $1 ORDER BY id", 10, prefetch=3)]
        cur = await conn.cursor(f"SELECT id, name FROM {T} ORDER BY id")
        first = await cur.fetch(3)
        moved = await cur.forward(2)
        nxt = await cur.fetchrow()
        await conn.execute(f"DECLARE drv_sql CURSOR FOR SELECT id FROM {T} ORDER BY id")
        fetched = await conn.fetch("FETCH 2 FROM drv_sql")
        await conn.execute("CLOSE drv_sql")
    return {"iterated": it, "first": jsonable(first), "forward": moved, "after_forward": jsonable(nxt), "sql_fetch": jsonable(fetched)}


async def step_listen_notify(conn):
    listener = await connect()
    notifier = await connect()
    got = []
    done = asyncio.Event()

    def cb(c, pid, channel, payload):
        got.append((pid, channel, payload))
        if len(got) == 3:
            done.set()

    try:
        await listener.add_listener(CHANNEL, cb)
        npid_sql = await notifier.fetchval("SELECT pg_backend_pid()")
        own_sql = await listener.fetchval("SELECT pg_backend_pid()")
        await notifier.execute(f"NOTIFY {CHANNEL}, 'hello'")
        await notifier.execute(f"SELECT pg_notify('{CHANNEL}', 'via pg_notify')")
        await listener.execute(f"NOTIFY {CHANNEL}, 'to myself'")
        try:
            await asyncio.wait_for(done.wait(), 10)
        except asyncio.TimeoutError:
            raise StepFailed(f"{len(got)} of 3 notifications arrived within 10 s")
        await listener.remove_listener(CHANNEL, cb)
        out = []
        for pid, channel, payload in sorted(got, key=lambda g: g[2]):
            mine = payload == "to myself"
            out.append({
                "channel": channel,
                "payload": payload,
                "pid_matches_sender_pg_backend_pid": pid == (own_sql if mine else npid_sql),
                "pid_matches_sender_driver_pid": pid == (listener if mine else notifier).get_server_pid(),
            })
        return {"notifications": out}
    finally:
        await listener.close()
        await notifier.close()


async def step_cancel(conn):
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    task = asyncio.create_task(conn.fetchval("SELECT pg_sleep(30)"))
    await wait_active(pid)
    # Cancelling the task makes asyncpg send a CancelRequest and wait for the server.
    task.cancel()
    outcome = None
    try:
        await task
        outcome = "finished"
    except asyncio.CancelledError:
        outcome = "cancelled"
    after = await conn.fetchval("SELECT 'usable'")
    return {"outcome": outcome, "after": after}


async def step_large_objects(conn):
    # asyncpg has no large-object API: the server's functions, by SQL.
    async with conn.transaction():
        oid = await conn.fetchval("SELECT lo_from_bytea(0, $1)", b"hello large object")
        whole = await conn.fetchval("SELECT lo_get($1)", oid)
        fd = await conn.fetchval("SELECT lo_open($1, $2)", oid, 0x20000 | 0x40000)
        await conn.fetchval("SELECT lo_lseek($1, 6, 0)", fd)
        await conn.fetchval("SELECT lowrite($1, $2)", fd, b"LARGE")
        await conn.fetchval("SELECT lo_lseek($1, 0, 0)", fd)
        read = await conn.fetchval("SELECT loread($1, 100)", fd)
        await conn.fetchval("SELECT lo_close($1)", fd)
    gone = await conn.fetchval("SELECT lo_unlink($1)", oid)
    return {"oid_is_positive": oid > 0, "whole": whole.decode(), "after_write": read.decode(), "unlinked": gone}


async def step_prepared_by_name(conn):
    stmt = await conn.prepare(f"SELECT name FROM {T} WHERE id = $1", name="drv_asyncpg_named")
    a = await stmt.fetchval(1)
    params = [t.name for t in stmt.get_parameters()]
    attrs = [(x.name, x.type.name) for x in stmt.get_attributes()]
    by_sql = await conn.fetch("EXECUTE drv_asyncpg_named(2)")
    await conn.execute(f"PREPARE drv_sql_prepared(int) AS SELECT name FROM {T} WHERE id = $1")
    sql_prepared = await conn.fetch("EXECUTE drv_sql_prepared(3)")
    await conn.execute("DEALLOCATE drv_sql_prepared")
    auto = await conn.prepare(f"SELECT count(*) FROM {T} WHERE id > $1")
    auto_named = await conn.fetchval(
        "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE '__asyncpg_stmt_%' AND NOT from_sql"
    )
    return {
        "protocol_prepared": a,
        "parameters": params,
        "attributes": attrs,
        "execute_by_sql": jsonable(by_sql),
        "sql_prepared": jsonable(sql_prepared),
        "auto_named_count": await auto.fetchval(0),
        "server_has_auto_named": auto_named > 0,
    }


async def step_types(conn):
    # asyncpg introspects unknown type OIDs in pg_type on first use.
    await conn.execute(f"UPDATE {T} SET pair = ROW('x', 1.5)::{PAIR} WHERE id = 1")
    row = await conn.fetchrow(f"SELECT mood, pair, (pair).label AS label, ARRAY['ok', 'sad']::{MOOD}[] AS moods FROM {T} WHERE id = 4")
    pair = await conn.fetchval(f"SELECT pair FROM {T} WHERE id = 1")
    back = await conn.fetchval(f"SELECT $1::{PAIR}", ("y", 2))
    stmt = await conn.prepare(f"SELECT mood, pair FROM {T} WHERE id = $1")
    kinds = [(a.name, a.type.name, a.type.kind) for a in stmt.get_attributes()]
    return {"row": jsonable(row), "pair": jsonable(pair), "composite_param": jsonable(back), "attribute_kinds": kinds}


async def step_domain_type(conn):
    await conn.execute(f"DROP DOMAIN IF EXISTS {POSINT}")
    await conn.execute(f"CREATE DOMAIN {POSINT} AS int CHECK (VALUE > 0)")
    v = await conn.fetchval(f"SELECT $1::{POSINT}", 5)
    try:
        await conn.fetchval(f"SELECT $1::{POSINT}", -1)
        bad = None
    except asyncpg.PostgresError as e:
        bad = e.sqlstate
    await conn.execute(f"DROP DOMAIN {POSINT}")
    return {"value": v, "negative_sqlstate": bad}


async def step_transactions(conn):
    async with conn.transaction():
        await conn.execute(f"INSERT INTO {T} (id, name) VALUES (400, 'outer')")
        try:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {T} (id, name) VALUES (401, 'inner')")
                await conn.execute(f"INSERT INTO {T} (id, name) VALUES (400, 'duplicate')")
        except asyncpg.UniqueViolationError:
            pass
        inside = conn.is_in_transaction()
    tr = conn.transaction(isolation="serializable", readonly=True)
    await tr.start()
    iso = await conn.fetchval("SHOW transaction_isolation")
    ro = await conn.fetchval("SHOW transaction_read_only")
    await tr.rollback()
    tr = conn.transaction()
    await tr.start()
    await conn.execute(f"INSERT INTO {T} (id, name) VALUES (402, 'rolled back')")
    await tr.rollback()
    rows = await conn.fetch(f"SELECT id, name FROM {T} WHERE id BETWEEN 400 AND 403 ORDER BY id")
    return {"rows": jsonable(rows), "inside": inside, "after": conn.is_in_transaction(), "isolation": iso, "read_only": ro}


async def step_errors(conn):
    out = []
    for sql, args in [
        (f"INSERT INTO {T} (id, name) VALUES ($1, 'again')", (1,)),
        (f"INSERT INTO {T} (id, name) VALUES (999, repeat('x', 50))", ()),
        ("SELECT * FROM drv_no_such_table", ()),
        ("SELECT 1/$1::int", (0,)),
        ("SELECT $1::int", ("abc",)),
    ]:
        try:
            await conn.fetch(sql, *args)
            out.append({"sql": sql, "error": None})
        except (asyncpg.PostgresError, asyncpg.DataError) as e:
            out.append({
                "sql": sql,
                "class": type(e).__name__,
                "sqlstate": getattr(e, "sqlstate", None),
                "severity": getattr(e, "severity_en", None),
                "message": getattr(e, "message", None) or str(e),
                "detail": getattr(e, "detail", None),
                "constraint": getattr(e, "constraint_name", None),
                "table": getattr(e, "table_name", None),
                "position": getattr(e, "position", None),
            })
    out.append({"after": await conn.fetchval("SELECT 'usable'")})
    return {"errors": out}


async def step_syntax_error(conn):
    try:
        await conn.execute("SELEC 1")
        return {"error": None}
    except asyncpg.PostgresError as e:
        return {"sqlstate": e.sqlstate, "message": e.message, "position": e.position}


async def step_notice(conn):
    got = []
    conn.add_log_listener(lambda c, m: got.append({"severity": m.severity_en, "sqlstate": m.sqlstate, "message": m.message}))
    await conn.execute("DO $$BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END$$")
    await conn.execute("DROP TABLE IF EXISTS drv_asyncpg_absent")
    await asyncio.sleep(0)
    return {"notices": got}


async def step_tls(conn):
    ctx = ssl.create_default_context(cafile=os.environ["DRIVERS_CA"])
    c = await asyncpg.connect(ssl=ctx)
    try:
        server = await c.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        client = c._transport.get_extra_info("ssl_object") is not None
        return {"client_ssl_in_use": client, "server_sees_ssl": server, "query": await c.fetchval("SELECT 'over tls'")}
    finally:
        await c.close()


STEPS = [
    ("connect", step_connect),
    ("setup", step_setup),
    ("simple_query", step_simple_query),
    ("extended_query", step_extended_query),
    ("executemany", step_executemany),
    ("copy_text", step_copy_text),
    ("copy_binary", step_copy_binary),
    ("cursors", step_cursors),
    ("listen_notify", step_listen_notify),
    ("cancel", step_cancel),
    ("large_objects", step_large_objects),
    ("prepared_by_name", step_prepared_by_name),
    ("types", step_types),
    ("domain_type", step_domain_type),
    ("transactions", step_transactions),
    ("errors", step_errors),
    ("syntax_error", step_syntax_error),
    ("notice", step_notice),
    ("tls", step_tls),
]


async def main():
    failed = 0
    conn = None
    for name, fn in STEPS:
        try:
            if conn is None or conn.is_closed():
                conn = await connect()
            line = {"step": name, "ok": True, **(await fn(conn))}
        except (asyncpg.PostgresError, asyncpg.InterfaceError, StepFailed, OSError, asyncio.TimeoutError) as e:
            failed += 1
            line = {"step": name, "ok": False, "error": f"{type(e).__name__}: {e}".strip(), "sqlstate": getattr(e, "sqlstate", None)}
            if conn is not None and not conn.is_closed() and conn.is_in_transaction():
                try:
                    await conn.execute("ROLLBACK")
                except (asyncpg.PostgresError, asyncpg.InterfaceError):
                    conn = None
        print(json.dumps({"driver": DRIVER, **line}, sort_keys=True, default=str), flush=True)
    if conn is not None:
        await conn.close()
    return failed


if __name__ == "__main__":
    sys.exit(1 if asyncio.run(main()) else 0)
