//! A small tokio-postgres client for the end-to-end tests, run as a process inside
//! a test cgroup (the kernel redirect only sees processes in the cgroup).
//!
//! usage: pc-pgclient CONNINFO STEPS_JSON
//!
//! CONNINFO is a libpq-style connection string or URL; without a password in it,
//! `$PGPASSWORD` is used, as libpq does.
//!
//! STEPS_JSON is an array of steps, run in order on one connection:
//!   {"query": SQL}                          simple query protocol; rows as text
//!   {"prepared": SQL, "params": [..]}       extended protocol: prepare, bind typed params
//!                                           (int2/4/8, float4/8, bool, text-like), execute
//!   {"transaction": [SQL, ..], "commit": b} BEGIN, each statement, COMMIT (or ROLLBACK)
//!   {"copy_in": SQL, "data": TEXT}          COPY ... FROM STDIN with TEXT as the data
//!   {"copy_out": SQL}                       COPY ... TO STDOUT; the data as text
//!   {"cancel": SQL}                         runs SQL (e.g. SELECT pg_sleep(30)), waits until
//!                                           pg_stat_activity shows it active (a second
//!                                           connection), cancels it with the cancel token
//!   {"expect_error": SQL, "sqlstate": CODE} the statement must fail with that SQLSTATE
//!   {"try": SQL}                            simple query; success or error is the result
//!                                           ({"ok", "rows"} or {"ok": false, "sqlstate", "error"})
//!
//! Prints one JSON line: {"ok": true, "steps": [..]} or {"ok": false, "failed_step": i,
//! "error": .., "sqlstate": .., "steps": [results so far]} (exit status 1). Exit status 2
//! for bad arguments.

#![forbid(unsafe_code)]

use std::pin::pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

struct StepError {
    message: String,
    sqlstate: Option<String>,
}

impl From<tokio_postgres::Error> for StepError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self {
            sqlstate: e.code().map(|c| c.code().to_string()),
            message: match e.as_db_error() {
                Some(db) => format!("{}: {}", db.severity(), db.message()),
                None => e.to_string(),
            },
        }
    }
}

fn fail(message: impl Into<String>) -> StepError {
    StepError {
        message: message.into(),
        sqlstate: None,
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("pc-pgclient: {msg}\nusage: pc-pgclient CONNINFO STEPS_JSON");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [conninfo, steps] = args.as_slice() else {
        usage("expected two arguments")
    };
    let steps: Vec<Value> = match serde_json::from_str(steps) {
        Ok(Value::Array(a)) => a,
        Ok(_) => usage("STEPS_JSON must be a JSON array"),
        Err(e) => usage(&format!("STEPS_JSON is not JSON: {e}")),
    };
    let mut done = Vec::new();
    let client = match connect(conninfo).await {
        Ok(c) => c,
        Err(e) => report_failure(None, e, done),
    };
    for (i, step) in steps.iter().enumerate() {
        match run_step(&client, conninfo, step).await {
            Ok(v) => done.push(v),
            Err(e) => report_failure(Some(i), e, done),
        }
    }
    println!("{}", json!({"ok": true, "steps": done}));
}

fn report_failure(step: Option<usize>, e: StepError, done: Vec<Value>) -> ! {
    println!(
        "{}",
        json!({"ok": false, "failed_step": step, "error": e.message, "sqlstate": e.sqlstate, "steps": done})
    );
    std::process::exit(1)
}

async fn connect(conninfo: &str) -> Result<Client, StepError> {
    let mut config: tokio_postgres::Config = conninfo.parse()?;
    // As libpq does: the password from the environment, so it is not on the command
    // line (where every process listing, and the agent's attribution, would show it).
    if config.get_password().is_none()
        && let Some(p) = std::env::var_os("PGPASSWORD")
    {
        config.password(p.as_encoded_bytes());
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("pc-pgclient: connection ended: {e}");
        }
    });
    Ok(client)
}

fn sql_of<'a>(step: &'a Value, key: &str) -> Result<&'a str, StepError> {
    step[key]
        .as_str()
        .ok_or_else(|| fail(format!("step {step}: `{key}` must be a string")))
}

async fn run_step(client: &Client, conninfo: &str, step: &Value) -> Result<Value, StepError> {
    let obj = step
        .as_object()
        .ok_or_else(|| fail(format!("step {step} is not an object")))?;
    if obj.contains_key("query") {
        let msgs = client.simple_query(sql_of(step, "query")?).await?;
        Ok(simple_rows(&msgs))
    } else if obj.contains_key("prepared") {
        let stmt = client.prepare(sql_of(step, "prepared")?).await?;
        let given = step["params"].as_array().cloned().unwrap_or_default();
        if given.len() != stmt.params().len() {
            return Err(fail(format!(
                "statement takes {} parameters, step gives {}",
                stmt.params().len(),
                given.len()
            )));
        }
        let params = stmt
            .params()
            .iter()
            .zip(&given)
            .map(|(t, v)| param(t, v))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query(&stmt, &refs).await?;
        let rows: Vec<Value> = rows.iter().map(typed_row).collect();
        Ok(json!({"rows": rows}))
    } else if obj.contains_key("transaction") {
        let stmts = step["transaction"]
            .as_array()
            .ok_or_else(|| fail("`transaction` must be an array of SQL strings"))?;
        client.batch_execute("BEGIN").await?;
        let mut affected = Vec::new();
        for s in stmts {
            let s = s
                .as_str()
                .ok_or_else(|| fail("`transaction` must be an array of SQL strings"))?;
            affected.push(client.execute(s, &[]).await?);
        }
        let commit = step["commit"].as_bool().unwrap_or(true);
        client
            .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .await?;
        Ok(json!({"affected": affected, "committed": commit}))
    } else if obj.contains_key("copy_in") {
        let data = step["data"].as_str().unwrap_or("").to_string();
        let mut sink = pin!(client.copy_in::<_, Bytes>(sql_of(step, "copy_in")?).await?);
        sink.send(Bytes::from(data)).await?;
        let rows = sink.as_mut().finish().await?;
        Ok(json!({"rows": rows}))
    } else if obj.contains_key("copy_out") {
        let stream = client.copy_out(sql_of(step, "copy_out")?).await?;
        let mut stream = pin!(stream);
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?);
        }
        Ok(json!({"data": String::from_utf8_lossy(&data)}))
    } else if obj.contains_key("cancel") {
        cancel(client, conninfo, sql_of(step, "cancel")?).await
    } else if obj.contains_key("try") {
        // Either outcome is a result: the test decides what it expected.
        match client.simple_query(sql_of(step, "try")?).await {
            Ok(msgs) => {
                let rows = msgs
                    .iter()
                    .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
                    .count();
                Ok(json!({"ok": true, "rows": rows}))
            }
            Err(e) => {
                let e = StepError::from(e);
                Ok(json!({"ok": false, "sqlstate": e.sqlstate, "error": e.message}))
            }
        }
    } else if obj.contains_key("expect_error") {
        let want = step["sqlstate"].as_str().unwrap_or("");
        match client.simple_query(sql_of(step, "expect_error")?).await {
            Ok(_) => Err(fail(format!(
                "expected SQLSTATE {want}, the statement succeeded"
            ))),
            Err(e) => {
                let got = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                if got == want {
                    Ok(json!({"sqlstate": got}))
                } else {
                    Err(StepError {
                        message: format!("expected SQLSTATE {want}, got {got}: {e}"),
                        sqlstate: Some(got),
                    })
                }
            }
        }
    } else {
        Err(fail(format!("unknown step {step}")))
    }
}

/// Runs `sql` on `client` and, once another connection sees it active, cancels it
/// through the cancel token (a CancelRequest on a new connection to the same
/// address). The query must end with SQLSTATE 57014 (query_canceled).
async fn cancel(client: &Client, conninfo: &str, sql: &str) -> Result<Value, StepError> {
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let watcher = connect(conninfo).await?;
    let token = client.cancel_token();
    let query = client.simple_query(sql);
    let canceller = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let active = watcher
                .query_opt(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                    &[&pid],
                )
                .await?;
            if active.is_some() {
                token.cancel_query(NoTls).await?;
                return Ok::<_, StepError>(());
            }
            if Instant::now() > deadline {
                return Err(fail("the query never showed as active within 20 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (res, cancelled) = tokio::join!(query, canceller);
    cancelled?;
    match res {
        Ok(_) => Err(fail("the query finished; it was not cancelled")),
        Err(e) => {
            let got = e.code().map(|c| c.code().to_string()).unwrap_or_default();
            if got == "57014" {
                Ok(json!({"cancelled": true, "sqlstate": got, "backend_pid": pid}))
            } else {
                Err(StepError {
                    message: format!("expected SQLSTATE 57014 after the cancel, got {got}: {e}"),
                    sqlstate: Some(got),
                })
            }
        }
    }
}

fn simple_rows(msgs: &[SimpleQueryMessage]) -> Value {
    let mut rows = Vec::new();
    let mut commands = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::Row(r) => rows.push(Value::Array(
                (0..r.len())
                    .map(|i| r.get(i).map_or(Value::Null, |s| Value::String(s.into())))
                    .collect(),
            )),
            SimpleQueryMessage::CommandComplete(n) => commands.push(*n),
            _ => {}
        }
    }
    json!({"rows": rows, "commands": commands})
}

fn typed_row(r: &tokio_postgres::Row) -> Value {
    let cols = r.columns();
    Value::Array(
        (0..cols.len())
            .map(|i| {
                let t = cols[i].type_();
                let v = match *t {
                    Type::BOOL => r.try_get::<_, Option<bool>>(i).map(|v| json!(v)),
                    Type::INT2 => r.try_get::<_, Option<i16>>(i).map(|v| json!(v)),
                    Type::INT4 => r.try_get::<_, Option<i32>>(i).map(|v| json!(v)),
                    Type::INT8 => r.try_get::<_, Option<i64>>(i).map(|v| json!(v)),
                    Type::FLOAT4 => r.try_get::<_, Option<f32>>(i).map(|v| json!(v)),
                    Type::FLOAT8 => r.try_get::<_, Option<f64>>(i).map(|v| json!(v)),
                    _ => r.try_get::<_, Option<String>>(i).map(|v| json!(v)),
                };
                v.unwrap_or_else(|_| json!({"unsupported_type": t.name()}))
            })
            .collect(),
    )
}

fn param(t: &Type, v: &Value) -> Result<Box<dyn ToSql + Sync>, StepError> {
    let bad = || fail(format!("parameter {v} does not fit type {}", t.name()));
    Ok(match *t {
        Type::BOOL => Box::new(
            v.as_bool()
                .map(Some)
                .or(v.is_null().then_some(None))
                .ok_or_else(bad)?,
        ),
        Type::INT2 => Box::new(
            v.as_i64()
                .and_then(|n| i16::try_from(n).ok())
                .map(Some)
                .or(v.is_null().then_some(None))
                .ok_or_else(bad)?,
        ),
        Type::INT4 => Box::new(
            v.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(Some)
                .or(v.is_null().then_some(None))
                .ok_or_else(bad)?,
        ),
        Type::INT8 => Box::new(
            v.as_i64()
                .map(Some)
                .or(v.is_null().then_some(None))
                .ok_or_else(bad)?,
        ),
        Type::FLOAT4 => Box::new(
            v.as_f64()
                .map(|f| Some(f as f32))
                .or(v.is_null().then_some(None))
                .ok_or_else(bad)?,
        ),
        Type::FLOAT8 => Box::new(
            v.as_f64()
                .map(Some)
                .or(v.is_null().then_some(None))
                .ok_or_else(bad)?,
        ),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => Box::new(
            v.as_str()
                .map(|s| Some(s.to_string()))
                .or(v.is_null().then_some(None))
                .ok_or_else(bad)?,
        ),
        _ => {
            return Err(fail(format!(
                "parameter type {} is not supported: cast it in SQL ($1::text::{})",
                t.name(),
                t.name()
            )));
        }
    })
}
