#!/usr/bin/env node
// Driver conformance scenario for node-postgres (`pg`, with pg-cursor and
// pg-copy-streams); tests/tests/drivers.rs runs it direct and through the agent
// and compares the output line by line.
//
// The connection comes from the libpq environment (PGHOST, PGPORT, PGUSER,
// PGDATABASE, PGPASSWORD), which pg reads; DRIVERS_CA names the CA that signed
// the server's and the agent's certificates (for the TLS step). NODE_PATH points
// at the node_modules `cargo xtask setup` installs under target/.
//
// Prints one JSON line per step: {"step": NAME, "ok": true, ...} with values that
// hold on every run (pids and OIDs are replaced by comparisons), or {"step":
// NAME, "ok": false, "error": .., "sqlstate": ..}. A failed step does not stop
// the run; a broken connection is replaced for the next step.
'use strict'

const fs = require('fs')
const crypto = require('crypto')
const { pipeline } = require('stream/promises')
const { Readable, Writable } = require('stream')

let pg, Cursor, copyFrom, copyTo
try {
  pg = require('pg')
  Cursor = require('pg-cursor')
  copyFrom = require('pg-copy-streams').from
  copyTo = require('pg-copy-streams').to
} catch (e) {
  console.error(`node_pg_steps.js: pg, pg-cursor or pg-copy-streams is not installed (${e.message}): run \`cargo xtask setup\``)
  process.exit(2)
}

const DRIVER = 'node-pg'
const T = 'drv_node_items'
const MOOD = 'drv_node_mood'
const PAIR = 'drv_node_pair'
const CHANNEL = 'drv_node_chan'

class StepFailed extends Error {}

async function connect (extra = {}) {
  const c = new pg.Client({ ssl: false, ...extra })
  // pg keeps no ParameterStatus values of its own: collected from the connection.
  c.reportedParameters = {}
  c.connection.on('parameterStatus', (m) => { c.reportedParameters[m.parameterName] = m.parameterValue })
  await c.connect()
  c.on('error', () => {})
  return c
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function waitActive (pid) {
  const w = await connect()
  try {
    for (let i = 0; i < 400; i++) {
      const r = await w.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", [pid])
      if (r.rowCount > 0) return
      await sleep(50)
    }
    throw new StepFailed('the query never showed as active within 20 s')
  } finally {
    await w.end()
  }
}

const one = async (c, sql, values) => (await c.query(sql, values)).rows[0]

function hex (b) { return '\\x' + Buffer.from(b).toString('hex') }

function plain (v) {
  if (v === null || v === undefined) return null
  if (Buffer.isBuffer(v)) return hex(v)
  if (v instanceof Date) return v.toISOString()
  if (Array.isArray(v)) return v.map(plain)
  if (typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]))
  return v
}

async function collect (readable) {
  const chunks = []
  await pipeline(readable, new Writable({ write (chunk, _enc, cb) { chunks.push(chunk); cb() } }))
  return Buffer.concat(chunks)
}

const steps = {
  async connect (c) {
    const r = await one(c, 'SELECT pg_backend_pid() AS pid, current_user AS u, current_database() AS d, current_setting(\'server_version_num\')::int / 10000 AS major')
    const p = c.reportedParameters
    return {
      user: r.u,
      dbname: r.d,
      server_version_major: r.major,
      driver_pid_matches_pg_backend_pid: c.processID === r.pid,
      parameters: Object.fromEntries(['server_encoding', 'client_encoding', 'DateStyle', 'integer_datetimes', 'standard_conforming_strings', 'TimeZone'].map((k) => [k, p[k] ?? null]))
    }
  },

  async setup (c) {
    for (const sql of [
      `DROP TABLE IF EXISTS ${T}`,
      `DROP TYPE IF EXISTS ${PAIR}`,
      `DROP TYPE IF EXISTS ${MOOD}`,
      `CREATE TYPE ${MOOD} AS ENUM ('sad', 'ok', 'happy')`,
      `CREATE TYPE ${PAIR} AS (label text, amount numeric(10,2))`,
      `CREATE TABLE ${T} (id int PRIMARY KEY, name text NOT NULL, mood ${MOOD}, pair ${PAIR}, data bytea, CONSTRAINT ${T}_name_short CHECK (length(name) < 40))`
    ]) await c.query(sql)
    return { created: [T, MOOD, PAIR] }
  },

  async simple_query (c) {
    // No values: the simple query protocol; several statements give several results.
    const rs = await c.query(`INSERT INTO ${T} (id, name) VALUES (1, 'one'), (2, 'two'); SELECT id, name FROM ${T} ORDER BY id; SELECT 'x' AS x`)
    return { results: rs.map((r) => ({ command: r.command, rowCount: r.rowCount, fields: r.fields.map((f) => f.name), rows: plain(r.rows) })) }
  },

  async extended_query (c) {
    const r = await c.query({
      text: 'SELECT $1::int AS i, $2::text AS t, $3::numeric AS n, $4::bytea AS b, $5::jsonb AS j, $6::int[] AS a, $7::timestamptz AS ts, $8::text AS nothing, $9::bool AS yes',
      values: [42, 'text ü', '12.50', Buffer.from([0, 1, 255]), '{"k": [1, 2]}', [1, 2, 3], '2026-01-02T03:04:05Z', null, true]
    })
    const asArray = await c.query({ text: 'SELECT $1::int + 1 AS x, $2::text AS y', values: [1, 'z'], rowMode: 'array' })
    return { row: plain(r.rows[0]), array_mode: asArray.rows, fields: r.fields.map((f) => f.name) }
  },

  async named_statements (c) {
    // `name` makes pg Parse a named statement once and Bind/Execute it after.
    const q = { name: 'drv_node_named', text: `SELECT name FROM ${T} WHERE id = $1` }
    const a = await c.query({ ...q, values: [1] })
    const b = await c.query({ ...q, values: [2] })
    const bySql = await c.query('EXECUTE drv_node_named(1)')
    await c.query(`PREPARE drv_sql_prepared(int) AS SELECT name FROM ${T} WHERE id = $1`)
    const sqlPrepared = await c.query('EXECUTE drv_sql_prepared(2)')
    await c.query('DEALLOCATE drv_sql_prepared')
    const left = await one(c, "SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name IN ('drv_node_named', 'drv_sql_prepared')")
    return { first: a.rows, second: b.rows, execute_by_sql: bySql.rows, sql_prepared: sqlPrepared.rows, left: left.n }
  },

  async pipeline (_c) {
    // pipeline: true sends every queued query without waiting for the one before.
    const p = await connect({ pipeline: true })
    try {
      const sent = [
        p.query(`INSERT INTO ${T} (id, name) VALUES ($1, $2)`, [100, 'piped']),
        p.query(`SELECT name FROM ${T} WHERE id = $1`, [100]),
        p.query('SELECT 1 / $1::int AS boom', [0]),
        p.query(`UPDATE ${T} SET name = $1 WHERE id = $2`, ['piped 2', 100]),
        p.query(`SELECT name FROM ${T} WHERE id = $1`, [100])
      ]
      const settled = await Promise.allSettled(sent)
      return {
        results: settled.map((s) => s.status === 'fulfilled'
          ? { ok: true, command: s.value.command, rowCount: s.value.rowCount, rows: s.value.rows }
          : { ok: false, sqlstate: s.reason.code ?? null })
      }
    } finally {
      await p.end()
    }
  },

  async copy_text (c) {
    await pipeline(Readable.from(['200\tcopied a\n201\tcopied b\n', '202\twith \\t tab\n']), c.query(copyFrom(`COPY ${T} (id, name) FROM STDIN`)))
    const out = await collect(c.query(copyTo(`COPY (SELECT id, name FROM ${T} WHERE id >= 200 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)`)))
    return { out: out.toString() }
  },

  async copy_binary (c) {
    const raw = await collect(c.query(copyTo(`COPY (SELECT id, name, data FROM ${T} WHERE id >= 200 ORDER BY id) TO STDOUT (FORMAT binary)`)))
    await c.query('CREATE TEMP TABLE drv_node_copy (id int, name text, data bytea)')
    const into = c.query(copyFrom('COPY drv_node_copy FROM STDIN (FORMAT binary)'))
    await pipeline(Readable.from([raw.subarray(0, 7), raw.subarray(7)]), into)
    const same = await one(c, `SELECT count(*)::int AS n FROM drv_node_copy d JOIN ${T} t ON t.id = d.id AND t.name = d.name`)
    await c.query('DROP TABLE drv_node_copy')
    return { out_bytes: raw.length, out_sha256: crypto.createHash('sha256').update(raw).digest('hex'), copied_back: into.rowCount, back_rows_equal: same.n }
  },

  async cursors (c) {
    // pg-cursor: a portal read with a row limit (Execute max rows, PortalSuspended).
    await c.query('BEGIN')
    const cur = c.query(new Cursor(`SELECT id, name FROM ${T} ORDER BY id`))
    const first = await cur.read(2)
    const second = await cur.read(2)
    await cur.close()
    await c.query(`DECLARE drv_sql CURSOR FOR SELECT id FROM ${T} ORDER BY id`)
    const fetched = await c.query('FETCH 2 FROM drv_sql')
    await c.query('CLOSE drv_sql')
    await c.query('COMMIT')
    return { first, second, sql_fetch: fetched.rows }
  },

  async listen_notify (_c) {
    const listener = await connect()
    const notifier = await connect()
    try {
      const got = []
      const done = new Promise((resolve) => listener.on('notification', (m) => { got.push(m); if (got.length === 3) resolve() }))
      await listener.query(`LISTEN ${CHANNEL}`)
      const npid = (await one(notifier, 'SELECT pg_backend_pid() AS p')).p
      const own = (await one(listener, 'SELECT pg_backend_pid() AS p')).p
      await notifier.query(`NOTIFY ${CHANNEL}, 'hello'`)
      await notifier.query('SELECT pg_notify($1, $2)', [CHANNEL, 'via pg_notify'])
      await listener.query(`NOTIFY ${CHANNEL}, 'to myself'`)
      const timeout = sleep(10000).then(() => { throw new StepFailed(`${got.length} of 3 notifications arrived within 10 s`) })
      await Promise.race([done, timeout])
      await listener.query(`UNLISTEN ${CHANNEL}`)
      got.sort((a, b) => a.payload.localeCompare(b.payload))
      return {
        notifications: got.map((m) => {
          const mine = m.payload === 'to myself'
          return {
            channel: m.channel,
            payload: m.payload,
            pid_matches_sender_pg_backend_pid: m.processId === (mine ? own : npid),
            pid_matches_sender_driver_pid: m.processId === (mine ? listener : notifier).processID
          }
        })
      }
    } finally {
      await listener.end()
      await notifier.end()
    }
  },

  async cancel (c) {
    const pid = (await one(c, 'SELECT pg_backend_pid() AS p')).p
    const q = new pg.Query('SELECT pg_sleep(30)')
    const running = new Promise((resolve) => {
      q.on('error', (e) => resolve(e))
      q.on('end', () => resolve(null))
    })
    c.query(q)
    await waitActive(pid)
    // A second client sends the CancelRequest with the first one's key.
    new pg.Client({ ssl: false }).cancel(c, q)
    const err = await running
    const after = (await one(c, "SELECT 'usable' AS a")).a
    return { sqlstate: err ? err.code : null, after }
  },

  async large_objects (c) {
    // pg has no large-object API: the server's functions, by SQL.
    await c.query('BEGIN')
    const oid = (await one(c, 'SELECT lo_from_bytea(0, $1) AS o', [Buffer.from('hello large object')])).o
    const whole = (await one(c, 'SELECT lo_get($1) AS b', [oid])).b
    const fd = (await one(c, 'SELECT lo_open($1, $2) AS fd', [oid, 0x20000 | 0x40000])).fd
    await c.query('SELECT lo_lseek($1, 6, 0)', [fd])
    await c.query('SELECT lowrite($1, $2)', [fd, Buffer.from('LARGE')])
    await c.query('SELECT lo_lseek($1, 0, 0)', [fd])
    const read = (await one(c, 'SELECT loread($1, 100) AS b', [fd])).b
    await c.query('SELECT lo_close($1)', [fd])
    await c.query('COMMIT')
    const gone = (await one(c, 'SELECT lo_unlink($1) AS g', [oid])).g
    return { oid_is_positive: Number(oid) > 0, whole: whole.toString(), after_write: read.toString(), unlinked: gone }
  },

  async types (c) {
    // pg does not introspect: the client looks the type up and registers a parser.
    const t = await one(c, `SELECT '${PAIR}'::regtype::oid::int AS pair, '${MOOD}'::regtype::oid::int AS mood`)
    const attrs = await c.query('SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute WHERE attrelid = (SELECT typrelid FROM pg_type WHERE oid = $1) AND attnum > 0 ORDER BY attnum', [t.pair])
    const labels = await c.query('SELECT enumlabel FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder', [t.mood])
    await c.query(`UPDATE ${T} SET pair = ROW('x, y', 1.5)::${PAIR}, mood = 'happy' WHERE id = 1`)
    const raw = await one(c, `SELECT mood, pair FROM ${T} WHERE id = 1`)
    const types = {
      getTypeParser: (oid, format) => oid === t.pair
        ? (s) => { const m = /^\("?((?:[^"]|"")*)"?,(.*)\)$/.exec(s); return m ? { label: m[1].replace(/""/g, '"'), amount: m[2] } : s }
        : pg.types.getTypeParser(oid, format)
    }
    const parsed = await c.query({ text: `SELECT pair, (pair).label AS label FROM ${T} WHERE id = $1`, values: [1], types })
    const fields = await c.query(`SELECT mood, pair FROM ${T} WHERE id = 1`)
    return {
      enum_labels: labels.rows.map((r) => r.enumlabel),
      composite_fields: attrs.rows.map((r) => [r.attname, r.type]),
      raw: raw,
      parsed: parsed.rows[0],
      field_types_match_catalog: fields.fields[0].dataTypeID === t.mood && fields.fields[1].dataTypeID === t.pair
    }
  },

  async transactions (c) {
    await c.query('BEGIN')
    await c.query(`INSERT INTO ${T} (id, name) VALUES (400, 'outer')`)
    await c.query('SAVEPOINT s1')
    let dup = null
    try { await c.query(`INSERT INTO ${T} (id, name) VALUES (400, 'duplicate')`) } catch (e) { dup = e.code }
    let aborted = null
    try { await c.query('SELECT 1') } catch (e) { aborted = e.code }
    await c.query('ROLLBACK TO SAVEPOINT s1')
    await c.query(`INSERT INTO ${T} (id, name) VALUES (401, 'after savepoint')`)
    await c.query('RELEASE SAVEPOINT s1')
    await c.query('COMMIT')
    await c.query('BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY')
    const iso = (await one(c, 'SHOW transaction_isolation')).transaction_isolation
    let ro = null
    try { await c.query(`DELETE FROM ${T} WHERE id = 401`) } catch (e) { ro = e.code }
    await c.query('ROLLBACK')
    const rows = await c.query(`SELECT id, name FROM ${T} WHERE id BETWEEN 400 AND 403 ORDER BY id`)
    return { duplicate: dup, in_failed_transaction: aborted, isolation: iso, read_only_write: ro, rows: rows.rows }
  },

  async errors (c) {
    const out = []
    for (const [sql, values] of [
      [`INSERT INTO ${T} (id, name) VALUES ($1, 'again')`, [1]],
      [`INSERT INTO ${T} (id, name) VALUES (999, repeat('x', 50))`, undefined],
      ['SELECT * FROM drv_no_such_table', undefined],
      ['SELECT 1 / $1::int', [0]],
      ['SELECT $1::int', ['abc']]
    ]) {
      try {
        await c.query(sql, values)
        out.push({ sql, error: null })
      } catch (e) {
        out.push({ sql, sqlstate: e.code ?? null, severity: e.severity ?? null, message: e.message, detail: e.detail ?? null, constraint: e.constraint ?? null, table: e.table ?? null, position: e.position ?? null })
      }
    }
    out.push({ after: (await one(c, "SELECT 'usable' AS a")).a })
    return { errors: out }
  },

  async syntax_error (c) {
    try {
      await c.query('SELEC 1')
      return { error: null }
    } catch (e) {
      return { sqlstate: e.code ?? null, message: e.message, position: e.position ?? null }
    }
  },

  async notice (c) {
    const got = []
    const h = (m) => got.push({ severity: m.severity, sqlstate: m.code, message: m.message })
    c.on('notice', h)
    await c.query("DO $$BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END$$")
    await c.query('DROP TABLE IF EXISTS drv_node_absent')
    c.off('notice', h)
    return { notices: got }
  },

  async tls (_c) {
    const t = await connect({ ssl: { ca: fs.readFileSync(process.env.DRIVERS_CA), rejectUnauthorized: true } })
    try {
      const r = await one(t, "SELECT ssl, 'over tls' AS q FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
      return { client_ssl_in_use: Boolean(t.connection.stream.encrypted), server_sees_ssl: r.ssl, query: r.q }
    } finally {
      await t.end()
    }
  }
}

function sorted (v) {
  if (Array.isArray(v)) return v.map(sorted)
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])]))
  return v
}

async function main () {
  let failed = 0
  let c = null
  for (const [name, fn] of Object.entries(steps)) {
    let line
    try {
      if (c === null) {
        c = await connect()
        c.on('end', () => { c = null })
      }
      line = { step: name, ok: true, ...plain(await fn(c)) }
    } catch (e) {
      failed++
      line = { step: name, ok: false, error: `${e.constructor.name}: ${e.message}`, sqlstate: e.code ?? null }
      if (c !== null) {
        try { await c.query('ROLLBACK') } catch (_) { try { c.end() } catch (_) {} c = null }
      }
    }
    console.log(JSON.stringify(sorted({ driver: DRIVER, ...line })))
  }
  if (c !== null) await c.end()
  process.exit(failed ? 1 : 0)
}

main()
