//! One PostgreSQL session through the agent: startup (TLS, cancel), upstream
//! login with agent-held credentials (or the client's own exchange relayed),
//! then every statement decided, forwarded or refused, and audited.
//!
//! Refusing a statement without breaking the session: the agent never forwards
//! a refused statement. In its place it sends the server a statement that cannot
//! parse (`PORTCULLIS DENIED`): the server fails it exactly as it fails any
//! statement, so the transaction state (an implicit transaction rolled back, an
//! explicit block marked failed), the skipping of pipelined messages up to Sync,
//! and the ReadyForQuery the client sees all stay the server's own. The agent
//! replaces that one error with its own (SQLSTATE 42501, naming the rule).
//!
//! The two directions run as two tasks sharing a queue of operations awaiting
//! their responses (`Track::ops`): the client side pushes one per message sent
//! upstream, the server side pops them as responses complete them, which is how
//! each statement's rows, duration and SQLSTATE are known for its audit record.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::auth::{self, Scram};
use super::cancel;
use super::codec::{self, CodecError, Frame, Front};
use super::opening::Opening;
use super::stream::Stream;
use crate::identity::Attribution;
use crate::policy::spec::{ClientTls, UpstreamTls};
use crate::policy::{
    self, Action, CompiledPolicy, Decision, Outcome, StatementFacts, Subject, Target,
};
use crate::protocol::sql::{
    Analysis, Prepared, SqlSession, StatementInfo, UNKNOWN_PREPARED, decide_message,
    most_restrictive,
};
use crate::recording::Recorder;
use crate::state::Shared;

/// The statement sent upstream in place of a refused one: it never parses.
const DENIED_SQL: &str = "PORTCULLIS DENIED";
/// Prepared-statement name used for that stand-in in the extended protocol (a
/// failed Parse stores nothing under it).
const DENIED_NAME: &str = "portcullis.denied";
/// How a session error caused by the client's bytes begins.
const CLIENT_VIOLATION: &str = "protocol violation from the client";
/// How long a client has to finish its startup.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Result rows kept per statement for the session recording; later rows are
/// counted only.
const RECORDED_ROWS: usize = 1000;

/// Everything the proxy knows about the session when it hands it over.
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub session_id: String,
    pub target: Target,
    pub dst: SocketAddr,
    pub attribution: Attribution,
    pub subject: Subject,
    pub workloads: Vec<String>,
    pub recorder: Option<Recorder>,
}

/// How the session went, for the connection's audit record.
#[derive(Default)]
pub struct Summary {
    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    pub end: &'static str,
    pub error: Option<String>,
    pub upstream_user: Option<String>,
    pub database: Option<String>,
    pub client_tls: bool,
    pub upstream_tls: bool,
    pub statements: u64,
    pub denied: u64,
    /// How the upstream login went: `scram-sha-256`, `md5`, `password`, `trust`.
    pub auth_method: Option<&'static str>,
    /// The session's search_path as the server reported it after login (the
    /// startup packet's, or the role's or database's default), for qualifying
    /// table names.
    pub startup_search_path: Option<String>,
    /// The session's current user after login (what `$user` names).
    pub session_user: Option<String>,
    /// The session's recorder, handed back for the proxy to finish.
    pub recorder: Option<Recorder>,
}

/// A failure during startup: what the client is told (as a FATAL error) and
/// what the audit record says.
struct Fail {
    sqlstate: &'static str,
    client: String,
    end: &'static str,
    detail: String,
}

impl Fail {
    fn new(sqlstate: &'static str, end: &'static str, msg: impl Into<String>) -> Self {
        let m = msg.into();
        Self {
            sqlstate,
            client: m.clone(),
            end,
            detail: m,
        }
    }
    fn io(e: impl std::fmt::Display) -> Self {
        let m = e.to_string();
        Self {
            sqlstate: "08006",
            client: String::new(),
            end: "error",
            detail: m,
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads more bytes into `buf`; `Ok(false)` at EOF.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    Ok(r.read_buf(buf).await? > 0)
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, out: &mut BytesMut) -> std::io::Result<()> {
    if !out.is_empty() {
        w.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Reads one typed message (startup phase: with the session's maximum).
async fn next_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, Fail> {
    loop {
        match codec::try_frame(buf, max) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(Fail::new("08P01", "protocol_error", e.to_string())),
        }
        match fill(r, buf).await {
            Ok(true) => {}
            Ok(false) => return Err(Fail::io("connection closed during startup")),
            Err(e) => return Err(Fail::io(e)),
        }
    }
}

pub async fn serve(mut ctx: Ctx, client: TcpStream) -> Summary {
    let mut sum = Summary {
        end: "closed",
        ..Default::default()
    };
    let _ = client.set_nodelay(true);
    let started = tokio::time::timeout(STARTUP_TIMEOUT, startup(&mut ctx, client, &mut sum)).await;
    let (client, upstream, keys) = match started {
        Ok(Ok(Some(x))) => {
            authentication(&ctx, &sum, "success", None);
            x
        }
        Ok(Ok(None)) => return finish(ctx, sum),
        Ok(Err((fail, client))) => {
            if matches!(
                fail.end,
                "upstream_auth_failed"
                    | "upstream_refused"
                    | "credentials_error"
                    | "channel_binding_refused"
            ) {
                authentication(&ctx, &sum, "failure", Some(&fail.detail));
            }
            if let Some(mut c) = client
                && !fail.client.is_empty()
            {
                let mut out = BytesMut::new();
                codec::error_response(&mut out, "FATAL", fail.sqlstate, &fail.client);
                let _ = send(&mut c, &mut out).await;
                let _ = c.shutdown().await;
            }
            sum.end = fail.end;
            sum.error = Some(fail.detail);
            return finish(ctx, sum);
        }
        Err(_) => {
            sum.end = "startup_timeout";
            sum.error = Some(format!(
                "the client did not complete its startup within {} s",
                STARTUP_TIMEOUT.as_secs()
            ));
            return finish(ctx, sum);
        }
    };
    let res = relay(&mut ctx, client, upstream, &mut sum).await;
    if let Some(k) = keys {
        ctx.shared.pg.cancels.remove(k);
    }
    if let Err(e) = res {
        if sum.end == "closed" {
            sum.end = "error";
        }
        sum.error = Some(e);
    }
    finish(ctx, sum)
}

/// The `authentication` audit record of the upstream login (OCSF Authentication).
fn authentication(ctx: &Ctx, sum: &Summary, outcome: &str, error: Option<&str>) {
    let a = &ctx.attribution;
    let rec = json!({
        "session_id": ctx.session_id,
        "target": ctx.target.name,
        "protocol": "postgres",
        "original_destination": ctx.dst.to_string(),
        "attribution": {"pid": a.pid, "uid": a.uid, "user": a.user, "exe": a.exe, "unit": a.unit, "cgroup": a.cgroup, "comm": a.comm},
        "workloads": ctx.workloads,
        "upstream_user": sum.upstream_user,
        "database": sum.database,
        "method": sum.auth_method,
        "credentials": ctx.target.credentials.as_ref().map_or("client (relayed)", |_| "agent-held"),
        "credential_name": ctx.target.credentials,
        "upstream_tls": sum.upstream_tls,
        "client_tls": sum.client_tls,
        "outcome": outcome,
        "error": error,
    });
    if let Err(e) = ctx.shared.audit.record("authentication", rec) {
        tracing::error!(error = %e, session = %ctx.session_id, "authentication audit record lost");
    }
}

fn finish(mut ctx: Ctx, mut sum: Summary) -> Summary {
    sum.recorder = ctx.recorder.take();
    sum
}

/// A relayed SCRAM login over a TLS upstream that asks for channel binding
/// (`y`: the client would have bound, had it been offered; `p=`: it binds)
/// cannot succeed: the binding would be to the agent's certificate, the proof
/// covers the flag, and the server, whose connection is TLS, refuses `y` as a
/// downgrade. The client is told why and what fixes it.
fn channel_binding_refusal(ctx: &Ctx, body: &[u8]) -> Option<Fail> {
    let flag = match auth::gs2_binding(body)? {
        auth::Gs2Binding::NotSupported => return None,
        auth::Gs2Binding::ClientSupports => "y".to_string(),
        auth::Gs2Binding::Binds(kind) => format!("p={kind}"),
    };
    let target = &ctx.target.name;
    let client = format!(
        "Portcullis: target {target} relays the client's own SCRAM login to a TLS server, \
         and SCRAM channel binding cannot pass through the agent's TLS; the client asked for \
         it (gs2 flag `{flag}`), which the server would refuse. Fix one of: connect with \
         channel_binding=disable, give target {target} agent-held `credentials`, or set \
         `tls.client: refuse` or `tls.upstream: disable` for it"
    );
    let detail = format!(
        "the client's SCRAM initial response asks for channel binding (gs2 flag `{flag}`), \
         which a relayed login to a TLS server cannot give; the login was not sent upstream"
    );
    Some(Fail {
        sqlstate: "28000",
        client,
        end: "channel_binding_refused",
        detail,
    })
}

/// Client, upstream, and the cancel keys registered for the session.
type Started = (Stream, Stream, Option<cancel::ClientKeys>);

/// Startup: TLS negotiation, cancel requests, upstream connection and login,
/// until the server's first ReadyForQuery has been passed to the client.
/// `Ok(None)`: the connection was a cancel request (handled).
async fn startup(
    ctx: &mut Ctx,
    tcp: TcpStream,
    sum: &mut Summary,
) -> Result<Option<Started>, (Fail, Option<Stream>)> {
    let pg = &ctx.shared.pg;
    let tls_mode = ctx.target.tls.client;
    let mut buf = BytesMut::with_capacity(8192);
    // The startup packet, after at most one TLS negotiation.
    let acceptor = super::client_tls(pg, &ctx.target);
    let (mut client, opening) = match super::opening::read(tcp, &mut buf, acceptor).await {
        Ok(x) => x,
        Err(e) => return Err((Fail::new(e.sqlstate, e.end, e.detail), e.client)),
    };
    sum.client_tls = client.is_tls();
    let params = match opening {
        Opening::Cancel { pid, secret } => {
            cancel(ctx, pid, secret, sum).await;
            return Ok(None);
        }
        Opening::Params { version, params } => {
            if version != codec::PROTOCOL_3_0 {
                // A newer minor version: answer with what we speak.
                let unknown: Vec<&str> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.as_str())
                    .collect();
                let mut out = BytesMut::new();
                negotiate_version(&mut out, &unknown);
                if let Err(e) = send(&mut client, &mut out).await {
                    return Err((Fail::io(e), None));
                }
            }
            params
        }
    };
    if tls_mode == ClientTls::Require && !client.is_tls() {
        return Err((
            Fail::new(
                "28000",
                "tls_required",
                format!(
                    "target {} requires TLS from clients (use sslmode=require or stronger)",
                    ctx.target.name
                ),
            ),
            Some(client),
        ));
    }
    let effective = match super::startup::read(&params) {
        Ok(e) => e,
        Err(e) => {
            return Err((
                Fail::new("42501", "refused", format!("Portcullis: {e}")),
                Some(client),
            ));
        }
    };
    let Some(client_user) = effective.user.clone() else {
        return Err((
            Fail::new(
                "28000",
                "protocol_error",
                "no user name in the startup packet",
            ),
            Some(client),
        ));
    };
    // The client is identified by the kernel attribution the connection was
    // decided on; it sends no password. A per-workload secret or token (the
    // identity work) would be checked here, before any upstream login.
    let mut database = effective
        .database
        .clone()
        .unwrap_or_else(|| client_user.clone());
    let cred = match &ctx.target.credentials {
        Some(name) => match crate::credentials::load(&ctx.shared.cfg.credentials_dir, name) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(target = %ctx.target.name, error = %e, "credentials unusable");
                return Err((
                    Fail {
                        sqlstate: "28000",
                        client: format!(
                            "Portcullis cannot use its credentials `{name}` for target {}; the operator must fix them (see the agent's log)",
                            ctx.target.name
                        ),
                        end: "credentials_error",
                        detail: e,
                    },
                    Some(client),
                ));
            }
        },
        None => None,
    };
    let upstream_user = cred
        .as_ref()
        .map_or(client_user.clone(), |c| c.user.clone());
    if let Some(d) = cred.as_ref().and_then(|c| c.database.clone()) {
        database = d;
    }
    sum.upstream_user = Some(upstream_user.clone());
    sum.database = Some(database.clone());

    // Upstream connection, with TLS when the target asks for it.
    let tcp = match crate::proxy::dial(
        ctx.dst,
        ctx.shared.cfg.upstream_mark,
        Duration::from_millis(ctx.shared.cfg.connect_timeout_ms),
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            return Err((
                Fail {
                    sqlstate: "08006",
                    client: format!("Portcullis could not reach target {}: {e}", ctx.target.name),
                    end: "upstream_unreachable",
                    detail: e,
                },
                Some(client),
            ));
        }
    };
    let mut upstream = match upstream_tls(ctx, tcp).await {
        Ok(s) => s,
        Err(e) => {
            return Err((
                Fail {
                    sqlstate: "08006",
                    client: format!(
                        "Portcullis could not open TLS to target {}: {e}",
                        ctx.target.name
                    ),
                    end: "upstream_tls_error",
                    detail: e,
                },
                Some(client),
            ));
        }
    };
    sum.upstream_tls = upstream.is_tls();
    let up_params = effective.upstream(&upstream_user, &database);
    let mut out = BytesMut::with_capacity(1024);
    codec::startup(&mut out, codec::PROTOCOL_3_0, &up_params);
    if let Err(e) = send(&mut upstream, &mut out).await {
        return Err((Fail::io(e), Some(client)));
    }
    let max = ctx.shared.cfg.pg_max_message_bytes;
    let mut ubuf = BytesMut::with_capacity(8192);
    let mut scram: Option<Scram> = None;
    // Authentication.
    loop {
        let f = match next_frame(&mut upstream, &mut ubuf, max).await {
            Ok(f) => f,
            Err(e) => return Err((e, Some(client))),
        };
        match f.tag {
            b'R' => {
                let (code, rest) = match codec::auth_request(&f.body) {
                    Ok(x) => x,
                    Err(e) => {
                        return Err((
                            Fail::new("08P01", "protocol_error", format!("from the server: {e}")),
                            Some(client),
                        ));
                    }
                };
                sum.auth_method = match code {
                    0 => sum.auth_method.or(Some("trust")),
                    3 => Some("password"),
                    5 => Some("md5"),
                    10..=12 => Some("scram-sha-256"),
                    _ => sum.auth_method,
                };
                if code == 0 {
                    if let Some(s) = &scram {
                        // SCRAM must have ended with a verified server-final.
                        if s.verified().is_err() {
                            return Err((
                                Fail::new(
                                    "28000",
                                    "upstream_auth_failed",
                                    "the server skipped SCRAM's final proof",
                                ),
                                Some(client),
                            ));
                        }
                    }
                    codec::auth_ok(&mut out);
                    if let Err(e) = send(&mut client, &mut out).await {
                        return Err((Fail::io(e), None));
                    }
                    break;
                }
                match &cred {
                    Some(c) => {
                        let step = match code {
                            3 => {
                                codec::password(&mut out, &c.password);
                                Ok(())
                            }
                            5 if rest.len() == 4 => {
                                codec::password(
                                    &mut out,
                                    &auth::md5_password(&c.user, &c.password, rest),
                                );
                                Ok(())
                            }
                            10 => match codec::sasl_mechanisms(rest) {
                                Ok(m) if m.iter().any(|x| x == auth::SCRAM_SHA_256) => {
                                    match Scram::new(&c.password) {
                                        Ok(s) => {
                                            codec::sasl_initial(
                                                &mut out,
                                                auth::SCRAM_SHA_256,
                                                &s.client_first(),
                                            );
                                            scram = Some(s);
                                            Ok(())
                                        }
                                        Err(e) => Err(e),
                                    }
                                }
                                Ok(m) => Err(format!(
                                    "the server offers SASL mechanisms {m:?}; the agent speaks SCRAM-SHA-256"
                                )),
                                Err(e) => Err(e.to_string()),
                            },
                            11 => match scram.as_mut() {
                                Some(s) => s
                                    .client_final(rest)
                                    .map(|d| codec::sasl_response(&mut out, &d)),
                                None => Err("SASLContinue without SASL".into()),
                            },
                            12 => match scram.as_mut() {
                                Some(s) => s.verify_server_final(rest),
                                None => Err("SASLFinal without SASL".into()),
                            },
                            other => Err(format!(
                                "the server asks for authentication method {other}, which the agent does not speak (it speaks SCRAM-SHA-256, md5 and password)"
                            )),
                        };
                        if let Err(e) = step {
                            return Err((
                                Fail {
                                    sqlstate: "28000",
                                    client: format!(
                                        "Portcullis could not log in to target {} as `{}`: {e}",
                                        ctx.target.name, c.user
                                    ),
                                    end: "upstream_auth_failed",
                                    detail: e,
                                },
                                Some(client),
                            ));
                        }
                        if let Err(e) = send(&mut upstream, &mut out).await {
                            return Err((Fail::io(e), Some(client)));
                        }
                    }
                    None => {
                        // The client's own exchange, relayed. Channel binding would bind
                        // to the agent's TLS, not the server's: offer SCRAM without it.
                        if code == 10 {
                            let mechs = codec::sasl_mechanisms(rest).unwrap_or_default();
                            let keep: Vec<&str> = mechs
                                .iter()
                                .map(String::as_str)
                                .filter(|m| !m.ends_with("-PLUS"))
                                .collect();
                            codec::auth_sasl(&mut out, &keep);
                        } else {
                            f.encode(&mut out);
                        }
                        if let Err(e) = send(&mut client, &mut out).await {
                            return Err((Fail::io(e), None));
                        }
                        if matches!(code, 3 | 5 | 10 | 11) {
                            let reply = match next_frame(&mut client, &mut buf, max).await {
                                Ok(r) => r,
                                Err(e) => return Err((e, Some(client))),
                            };
                            if reply.tag != b'p' {
                                return Err((
                                    Fail::new(
                                        "08P01",
                                        "protocol_error",
                                        "expected a password message from the client",
                                    ),
                                    Some(client),
                                ));
                            }
                            if code == 10
                                && upstream.is_tls()
                                && let Some(why) = channel_binding_refusal(ctx, &reply.body)
                            {
                                // Nothing goes upstream: the server would fail the
                                // login as a downgrade attack. Closing the upstream
                                // connection mid-login is a quiet end to it.
                                return Err((why, Some(client)));
                            }
                            reply.encode(&mut out);
                            if let Err(e) = send(&mut upstream, &mut out).await {
                                return Err((Fail::io(e), Some(client)));
                            }
                        }
                    }
                }
            }
            b'E' => {
                let n = codec::parse_notice(&f.body);
                let fail = match &cred {
                    // Never pass on what the server said about the agent's credentials.
                    Some(c) => Fail {
                        sqlstate: if n.sqlstate.is_empty() {
                            "28000"
                        } else {
                            "28P01"
                        },
                        client: format!(
                            "target {} refused the agent's credentials `{}` (database user `{}`, SQLSTATE {}); the operator must fix them",
                            ctx.target.name,
                            ctx.target.credentials.as_deref().unwrap_or(""),
                            c.user,
                            n.sqlstate
                        ),
                        end: "upstream_auth_failed",
                        detail: format!("{} {}: {}", n.severity, n.sqlstate, n.message),
                    },
                    None => {
                        // The server's own answer to the client's own login.
                        f.encode(&mut out);
                        let _ = send(&mut client, &mut out).await;
                        Fail {
                            sqlstate: "28000",
                            client: String::new(),
                            end: "upstream_refused",
                            detail: format!("{} {}: {}", n.severity, n.sqlstate, n.message),
                        }
                    }
                };
                return Err((fail, Some(client)));
            }
            b'v' | b'N' => {
                f.encode(&mut out);
                if let Err(e) = send(&mut client, &mut out).await {
                    return Err((Fail::io(e), None));
                }
            }
            t => {
                return Err((
                    Fail::new(
                        "08P01",
                        "protocol_error",
                        format!(
                            "unexpected message {:?} from the server during login",
                            t as char
                        ),
                    ),
                    Some(client),
                ));
            }
        }
    }
    // Parameters, key data, first ReadyForQuery.
    // Removed again if the startup fails after the server sent its keys.
    let mut keys = Registered {
        shared: ctx.shared.clone(),
        keys: None,
    };
    loop {
        let f = match next_frame(&mut upstream, &mut ubuf, max).await {
            Ok(f) => f,
            Err(e) => return Err((e, Some(client))),
        };
        match f.tag {
            b'K' => {
                let mut r = codec::Reader::new(&f.body);
                let (Ok(pid), Ok(secret)) = (r.i32("BackendKeyData"), r.i32("BackendKeyData"))
                else {
                    return Err((
                        Fail::new(
                            "08P01",
                            "protocol_error",
                            "malformed BackendKeyData from the server",
                        ),
                        Some(client),
                    ));
                };
                if let Some(k) = keys.keys.take() {
                    // A second BackendKeyData replaces the first.
                    ctx.shared.pg.cancels.remove(k);
                }
                keys.keys = ctx.shared.pg.cancels.register(cancel::Upstream {
                    addr: ctx.dst,
                    pid,
                    secret,
                    session_id: ctx.session_id.clone(),
                    target: ctx.target.name.clone(),
                });
                // The server's pid as it is; the secret is the agent's (with no
                // random secret to be had, one that no cancel request can use).
                let client_secret = match keys.keys {
                    Some(k) => k.secret,
                    None => {
                        tracing::warn!(session = %ctx.session_id, "no cancel key could be drawn; cancel requests of this session will be ignored");
                        0
                    }
                };
                codec::backend_key_data(&mut out, pid, client_secret);
            }
            b'Z' => {
                f.encode(&mut out);
                break;
            }
            b'E' => {
                f.encode(&mut out);
                let n = codec::parse_notice(&f.body);
                let _ = send(&mut client, &mut out).await;
                return Err((
                    Fail {
                        sqlstate: "08006",
                        client: String::new(),
                        end: "upstream_refused",
                        detail: format!("{} {}: {}", n.severity, n.sqlstate, n.message),
                    },
                    Some(client),
                ));
            }
            b'S' => {
                if let Some(why) = super::startup::unsafe_parameter_status(&f.body) {
                    return Err((
                        Fail::new("42501", "unsafe_setting", format!("Portcullis: {why}")),
                        Some(client),
                    ));
                }
                f.encode(&mut out)
            }
            b'N' => f.encode(&mut out),
            t => {
                return Err((
                    Fail::new(
                        "08P01",
                        "protocol_error",
                        format!(
                            "unexpected message {:?} from the server after login",
                            t as char
                        ),
                    ),
                    Some(client),
                ));
            }
        }
    }
    // What unqualified names resolve to is learned from the server, not assumed:
    // role and database defaults (`ALTER ROLE ... SET search_path`) apply too.
    match learn_session(&mut upstream, &mut ubuf, max).await {
        Ok((user, path)) => {
            sum.session_user = Some(user);
            sum.startup_search_path = Some(path);
        }
        Err(e) => return Err((e, Some(client))),
    }
    if !ubuf.is_empty() || !buf.is_empty() {
        // Nothing may precede the first ReadyForQuery; keep what arrived anyway.
        tracing::debug!("bytes pipelined during startup");
    }
    if let Err(e) = send(&mut client, &mut out).await {
        return Err((Fail::io(e), None));
    }
    if let Some(r) = ctx.recorder.as_mut() {
        r.event(
            "login",
            json!({"protocol": "postgres", "client_user": client_user, "upstream_user": upstream_user, "database": database, "client_tls": sum.client_tls, "upstream_tls": sum.upstream_tls, "credentials": ctx.target.credentials}),
        );
    }
    // Startup bytes already read stay with their streams: the client cannot have
    // pipelined queries before the first ReadyForQuery under protocol 3.0, and
    // the server sends nothing until asked.
    if !buf.is_empty() {
        return Err((
            Fail::new(
                "08P01",
                "protocol_error",
                "client sent messages before the server was ready",
            ),
            Some(client),
        ));
    }
    Ok(Some((client, upstream, keys.keys.take())))
}

/// Cancel keys registered during a startup, removed if the startup fails.
struct Registered {
    shared: Arc<Shared>,
    keys: Option<cancel::ClientKeys>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(k) = self.keys.take() {
            self.shared.pg.cancels.remove(k);
        }
    }
}

/// The agent's own query after login, before the client is told it is ready.
const LEARN_SQL: &str = "SELECT pg_catalog.current_setting('search_path'), current_user";

/// Asks the server for the session's search_path and current user (for
/// `$user`); returns (user, search_path).
async fn learn_session<S: AsyncRead + AsyncWrite + Unpin>(
    upstream: &mut S,
    ubuf: &mut BytesMut,
    max: usize,
) -> Result<(String, String), Fail> {
    let mut out = BytesMut::new();
    codec::query(&mut out, LEARN_SQL);
    send(upstream, &mut out).await.map_err(Fail::io)?;
    let mut got: Option<(String, String)> = None;
    let mut err: Option<String> = None;
    loop {
        let f = next_frame(upstream, ubuf, max).await?;
        match f.tag {
            b'D' => {
                if let Ok(v) = codec::data_row(&f.body)
                    && let [Some(p), Some(u)] = v.as_slice()
                {
                    got = Some((
                        String::from_utf8_lossy(u).into_owned(),
                        String::from_utf8_lossy(p).into_owned(),
                    ));
                }
            }
            b'E' => {
                let n = codec::parse_notice(&f.body);
                err = Some(format!("{} {}: {}", n.severity, n.sqlstate, n.message));
            }
            b'S' => {
                if let Some(why) = super::startup::unsafe_parameter_status(&f.body) {
                    return Err(Fail::new(
                        "42501",
                        "unsafe_setting",
                        format!("Portcullis: {why}"),
                    ));
                }
            }
            b'Z' => break,
            _ => {}
        }
    }
    match (got, err) {
        (Some(g), None) => Ok(g),
        (_, e) => Err(Fail::new(
            "08006",
            "upstream_refused",
            format!(
                "Portcullis could not read the session's search_path from the server{}",
                e.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        )),
    }
}

fn negotiate_version(out: &mut BytesMut, unknown: &[&str]) {
    use bytes::BufMut;
    let start = out.len();
    out.put_u8(b'v');
    out.put_i32(0);
    out.put_i32(codec::PROTOCOL_3_0 & 0xffff);
    out.put_i32(unknown.len() as i32);
    for u in unknown {
        out.put_slice(u.as_bytes());
        out.put_u8(0);
    }
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

async fn upstream_tls(ctx: &Ctx, mut tcp: TcpStream) -> Result<Stream, String> {
    let t = &ctx.target.tls;
    if t.upstream == UpstreamTls::Disable {
        return Ok(Stream::Plain(tcp));
    }
    let cfg = ctx
        .shared
        .pg
        .upstream_tls
        .get(t.ca_file.as_deref(), t.upstream)?;
    let mut out = BytesMut::new();
    codec::ssl_request(&mut out);
    tcp.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    tcp.read_exact(&mut b).await.map_err(|e| e.to_string())?;
    if b[0] != b'S' {
        return Err("the server does not accept TLS".into());
    }
    let name = super::tls::server_name(t.server_name.as_deref(), ctx.dst.ip())?;
    let s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    Ok(Stream::Client(Box::new(s)))
}

/// A CancelRequest with keys the agent handed out, sent to the target whose
/// session they belong to: forwarded to that server with the server's own keys.
/// Any other is ignored, as the server ignores keys it does not know.
async fn cancel(ctx: &Ctx, pid: i32, secret: i32, sum: &mut Summary) {
    sum.end = "cancel";
    let Some(up) = ctx
        .shared
        .pg
        .cancels
        .lookup(pid, secret)
        .filter(|u| u.target == ctx.target.name)
    else {
        sum.error = Some("cancel request with unknown keys (ignored, as the server does)".into());
        return;
    };
    let mut out = BytesMut::new();
    codec::cancel_request(&mut out, up.pid, up.secret);
    match crate::proxy::dial(
        up.addr,
        ctx.shared.cfg.upstream_mark,
        Duration::from_millis(ctx.shared.cfg.connect_timeout_ms),
    )
    .await
    {
        Ok(mut s) => {
            if let Err(e) = s.write_all(&out).await {
                sum.error = Some(format!("sending the cancel upstream: {e}"));
            }
            // The server closes the connection once it has read the request.
            let mut b = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
        }
        Err(e) => sum.error = Some(format!("sending the cancel upstream: {e}")),
    }
    let _ = ctx.shared.audit.record(
        "statement_cancel",
        json!({
            "session_id": ctx.session_id,
            "cancelled_session_id": up.session_id,
            "target": up.target,
            "pid": ctx.attribution.pid,
            "exe": ctx.attribution.exe,
            "error": sum.error,
        }),
    );
}

// ---- the established session ---------------------------------------------------------------

/// A statement as decided: what was sent, what the analysis found, what the
/// policy said.
struct Stmt {
    text: Arc<str>,
    info: Option<Arc<StatementInfo>>,
    facts: Option<StatementFacts>,
    parse_error: Option<String>,
    decision: Decision,
    policy_hash: Arc<str>,
    protocol: &'static str,
    name: Option<String>,
    /// Number of the statement in its session: links its `statement` record
    /// (written when it is decided) to its `statement_outcome` record.
    seq: u64,
}

impl Stmt {
    fn refused(&self) -> bool {
        self.decision.outcome != Outcome::Allow
    }
}

/// A statement running upstream.
struct Running {
    stmt: Arc<Stmt>,
    started: Instant,
    rows: u64,
    columns: Vec<(String, i16)>,
    formats: Vec<i16>,
    kept: Vec<Value>,
}

impl Running {
    fn new(stmt: Arc<Stmt>, formats: Vec<i16>) -> Self {
        Self {
            stmt,
            started: Instant::now(),
            rows: 0,
            columns: Vec::new(),
            formats,
            kept: Vec::new(),
        }
    }
}

/// A completed statement waiting for its recording and audit record.
struct Done {
    run: Running,
    tag: Option<String>,
    rows: Option<u64>,
    err: Option<codec::Notice>,
    duration: Duration,
}

/// A portal: the statement it runs and its result formats.
struct Portal {
    prepared: Option<Arc<Prepared>>,
    statement: String,
    formats: Vec<i16>,
}

/// Messages sent upstream whose responses have not all arrived.
enum Op {
    /// A Query message: its statements in order; ends at ReadyForQuery.
    Simple {
        stmts: Vec<Arc<Stmt>>,
        next: usize,
        cur: Option<Running>,
        /// Set when the whole message was refused and replaced.
        refused: Option<Arc<Stmt>>,
        failed: bool,
    },
    /// Parse; `refused`: replaced by the never-parsing stand-in.
    Parse {
        refused: Option<Arc<Stmt>>,
        /// The statement name and what the agent knew under it before: put back
        /// if the server fails or skips this Parse.
        restore: Option<(String, Option<Arc<Prepared>>)>,
    },
    Bind,
    Describe,
    Close,
    Execute {
        run: Option<Running>,
        refused: Option<Arc<Stmt>>,
    },
    Sync,
    /// FunctionCall; ends at ReadyForQuery.
    Function {
        run: Option<Running>,
        refused: Option<Arc<Stmt>>,
        failed: bool,
    },
}

struct Track {
    ops: VecDeque<Op>,
    /// The session's SQL state, prepared statements of both protocols included.
    sql: SqlSession,
    portals: HashMap<String, Portal>,
    recorder: Option<Recorder>,
    statements: u64,
    denied: u64,
    /// Set by a `kill` decision: the FATAL message that ends the session.
    kill: Option<String>,
    /// Set when the server reports a pinned setting with an unsafe value
    /// (ParameterStatus): why the session ends at once.
    unsafe_setting: Option<String>,
    /// Completed statements whose recording and audit record are still to write.
    done: Vec<Done>,
    /// Masks in the policy apply to this session: result values are not
    /// recorded (the agent does not apply masks yet, and nothing regulated may
    /// be stored in clear).
    withhold_values: bool,
}

impl Track {
    /// Puts back what a prepared-statement name meant before a Parse the server
    /// did not carry out.
    fn restore(&mut self, name: String, before: Option<Arc<Prepared>>) {
        self.sql.restore(name, before);
    }
}

struct Session<'a> {
    ctx: &'a Ctx,
    track: Mutex<Track>,
    /// The last statement number handed out (see `Stmt::seq`).
    seq: std::sync::atomic::AtomicU64,
    /// The fields every statement record of the session shares, built once.
    record_base: Map<String, Value>,
}

async fn relay(
    ctx: &mut Ctx,
    client: Stream,
    upstream: Stream,
    sum: &mut Summary,
) -> Result<(), String> {
    let recorder = ctx.recorder.take();
    let a = &ctx.attribution;
    let mut record_base = Map::new();
    record_base.insert("session_id".into(), ctx.session_id.clone().into());
    record_base.insert("target".into(), ctx.target.name.clone().into());
    record_base.insert("protocol".into(), "postgres".into());
    record_base.insert(
        "attribution".into(),
        json!({"pid": a.pid, "uid": a.uid, "user": a.user, "exe": a.exe, "unit": a.unit, "cgroup": a.cgroup, "comm": a.comm}),
    );
    record_base.insert("workloads".into(), json!(ctx.workloads));
    record_base.insert(
        "upstream_user".into(),
        sum.upstream_user.clone().unwrap_or_default().into(),
    );
    record_base.insert(
        "database".into(),
        sum.database.clone().unwrap_or_default().into(),
    );
    let sess = Session {
        ctx: &*ctx,
        seq: Default::default(),
        record_base,
        track: Mutex::new(Track {
            ops: VecDeque::new(),
            sql: SqlSession::new(
                sum.session_user
                    .as_deref()
                    .or(sum.upstream_user.as_deref())
                    .unwrap_or(""),
                sum.startup_search_path.as_deref(),
            ),
            portals: HashMap::new(),
            recorder,
            statements: 0,
            denied: 0,
            kill: None,
            unsafe_setting: None,
            done: Vec::new(),
            withhold_values: masks_apply(&ctx.shared.policy(), &ctx.target.name, &ctx.workloads),
        }),
    };
    let (res, up, down, end) = sess.pump(client, upstream).await;
    // Statements completed in the last exchange still get their records, and
    // those forwarded but never completed say so.
    sess.drain_done();
    sess.incomplete(end);
    let t = sess.track.into_inner().unwrap_or_else(|p| p.into_inner());
    sum.statements = t.statements;
    sum.denied = t.denied;
    sum.bytes_client_to_upstream = up;
    sum.bytes_upstream_to_client = down;
    sum.end = end;
    // The recorder goes back to the context, which finishes it.
    ctx.recorder = t.recorder;
    res
}

/// The SQLSTATE a refused statement is answered with: what the server says of
/// a prepared statement it does not know (26000) for an EXECUTE of a name the
/// agent did not see prepared, so drivers react as they would to the server;
/// insufficient privilege (42501) for every other refusal.
fn refusal_sqlstate(s: &Stmt) -> &'static str {
    if s.decision.rule == UNKNOWN_PREPARED {
        "26000"
    } else {
        "42501"
    }
}

/// Rule id of statements refused while the audit log cannot take records.
const AUDIT_UNAVAILABLE: &str = "audit-unavailable";
/// Rule id of an Execute of a portal the agent did not see bound.
const UNKNOWN_PORTAL: &str = "unknown-portal";
/// Rule id of a Parse beyond the prepared statements the agent follows.
const PREPARED_LIMIT: &str = "prepared-statement-limit";
/// Rule id of statements that change a setting the agent pins (how the server
/// reads statement text): refused whatever the policy and its mode say.
const PINNED_SETTING: &str = "pinned-setting";

/// Why a recording holds no result values.
const WITHHELD: &str = "masks in the policy apply to this session; the agent does not apply masks yet, so result values are not recorded";

/// Whether a mask of the policy names this target and (if it names workloads)
/// one of the session's workloads.
fn masks_apply(policy: &CompiledPolicy, target: &str, workloads: &[String]) -> bool {
    let Some(t) = policy.target_by_name(target) else {
        return false;
    };
    policy.masks.iter().any(|m| {
        m.targets.contains(&t.id)
            && m.workloads.as_ref().is_none_or(|ws| {
                ws.iter().any(|&w| {
                    policy
                        .workloads
                        .get(w)
                        .is_some_and(|x| workloads.contains(&x.name))
                })
            })
    })
}

/// The statement whose refusal decides a message: the most restrictive decision
/// among its statements (a rule's deny over the default's), if that refuses.
fn deciding_refusal(stmts: &[Arc<Stmt>]) -> Option<Arc<Stmt>> {
    let decisions: Vec<Decision> = stmts.iter().map(|s| s.decision.clone()).collect();
    let worst = most_restrictive(&decisions)?;
    if worst.outcome == Outcome::Allow {
        return None;
    }
    stmts.iter().find(|s| &s.decision == worst).cloned()
}

/// Bytes of a result value for the recording: text as text, binary as hex.
fn value_json(v: Option<&[u8]>, format: i16) -> Value {
    match v {
        None => Value::Null,
        Some(b) if format == 0 => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::String(hex(b)),
        },
        Some(b) => Value::String(hex(b)),
    }
}

/// A bytea-style rendering (`\\x...`) of bytes that are not text.
fn hex(b: &[u8]) -> String {
    format!("\\x{}", crate::audit::hex(b))
}

fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats.len() {
        0 => 0,
        1 => formats[0],
        _ => formats.get(i).copied().unwrap_or(0),
    }
}

fn lock(m: &Mutex<Track>) -> std::sync::MutexGuard<'_, Track> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session<'_> {
    /// Decides one statement with the policy in force now (a reload applies to
    /// the next statement of open sessions too).
    fn decide(&self, facts: Option<&StatementFacts>) -> (Decision, Arc<str>) {
        let policy: Arc<CompiledPolicy> = self.ctx.shared.policy();
        let hash: Arc<str> = Arc::from(policy.hash.as_str());
        if !self.ctx.shared.audit.healthy() {
            return (
                Decision {
                    outcome: Outcome::Deny,
                    decided: policy::spec::Effect::Deny,
                    rule: AUDIT_UNAVAILABLE.into(),
                    mode: policy::Mode::Enforce,
                    ..Decision::default()
                },
                hash,
            );
        }
        let Some(t) = policy.target_by_name(&self.ctx.target.name) else {
            return (
                Decision {
                    outcome: Outcome::Deny,
                    decided: policy::spec::Effect::Deny,
                    rule: "no-target".into(),
                    mode: policy::Mode::Enforce,
                    ..Decision::default()
                },
                hash,
            );
        };
        let action = match facts {
            Some(f) => Action::Statement(f),
            None => Action::Unparseable,
        };
        let d = policy::evaluate(
            &policy,
            &policy::Request {
                subject: &self.ctx.subject,
                target: t.id,
                action,
                now_unix: now_unix(),
            },
        );
        (d, hash)
    }

    /// Analyses and decides the statements of one text.
    fn check(
        &self,
        t: &mut Track,
        text: &str,
        protocol: &'static str,
        name: Option<&str>,
    ) -> Vec<Arc<Stmt>> {
        let analysis = self.ctx.shared.pg.analyzer.analyze(text);
        self.check_analysis(t, text, &analysis, protocol, name)
    }

    fn check_analysis(
        &self,
        t: &mut Track,
        text: &str,
        analysis: &Arc<Analysis>,
        protocol: &'static str,
        name: Option<&str>,
    ) -> Vec<Arc<Stmt>> {
        let policy: Arc<CompiledPolicy> = self.ctx.shared.policy();
        let policy_hash: Arc<str> = Arc::from(policy.hash.as_str());
        let text: Arc<str> = Arc::from(text);
        let name = name.map(str::to_string);
        let Some(target) = policy.target_by_name(&self.ctx.target.name) else {
            // The target left the policy while the session was open.
            return vec![Arc::new(Stmt {
                text,
                info: None,
                facts: None,
                parse_error: None,
                decision: Decision {
                    outcome: Outcome::Deny,
                    decided: policy::spec::Effect::Deny,
                    rule: "no-target".into(),
                    mode: policy::Mode::Enforce,
                    ..Decision::default()
                },
                policy_hash,
                protocol,
                name,
                seq: self.next_seq(),
            })];
        };
        let md = decide_message(
            &policy,
            &self.ctx.subject,
            target.id,
            now_unix(),
            &t.sql,
            analysis,
        );
        // No access without evidence: while the audit log is not accepting
        // records, every statement is refused (on_audit_failure: deny).
        let audit_down = !self.ctx.shared.audit.healthy();
        md.statements
            .into_iter()
            .enumerate()
            .map(|(i, sd)| {
                let info = analysis.statements.get(i).cloned();
                let refuse = |rule: &str| Decision {
                    outcome: Outcome::Deny,
                    decided: policy::spec::Effect::Deny,
                    rule: rule.into(),
                    mode: policy::Mode::Enforce,
                    ..Decision::default()
                };
                let pinned = info.as_ref().and_then(|i| i.pinned_setting.clone());
                let (decision, parse_error) = if audit_down {
                    (refuse(AUDIT_UNAVAILABLE), sd.error)
                } else if let Some(why) = pinned {
                    (refuse(PINNED_SETTING), Some(why))
                } else {
                    (sd.decision, sd.error)
                };
                Arc::new(Stmt {
                    text: text.clone(),
                    info,
                    facts: sd.facts,
                    parse_error,
                    decision,
                    policy_hash: policy_hash.clone(),
                    protocol,
                    name: name.clone(),
                    seq: self.next_seq(),
                })
            })
            .collect()
    }

    /// A statement refused by the agent itself (not by the policy): `rule` names
    /// why, `why` is what the client is told.
    fn refuse_as(
        &self,
        text: &str,
        protocol: &'static str,
        name: Option<&str>,
        rule: &str,
        why: String,
    ) -> Arc<Stmt> {
        let policy_hash: Arc<str> = Arc::from(self.ctx.shared.policy().hash.as_str());
        Arc::new(Stmt {
            text: Arc::from(text),
            info: None,
            facts: None,
            parse_error: Some(why),
            decision: Decision {
                outcome: Outcome::Deny,
                decided: policy::spec::Effect::Deny,
                rule: rule.into(),
                mode: policy::Mode::Enforce,
                ..Decision::default()
            },
            policy_hash,
            protocol,
            name: name.map(str::to_string),
            seq: self.next_seq(),
        })
    }

    /// A refusal by a `kill` rule ends the session: the message the client will
    /// get is left in `t.kill` for the session loop. True when it is one.
    fn kill(&self, t: &mut Track, s: &Stmt) -> bool {
        if s.decision.decided != policy::spec::Effect::Kill || s.decision.outcome != Outcome::Deny {
            return false;
        }
        let msg = format!(
            "Portcullis: session ended by rule `{}` (target {})",
            s.decision.rule, self.ctx.target.name
        );
        if let Some(r) = t.recorder.as_mut() {
            r.event(
                "error",
                json!({"severity": "FATAL", "sqlstate": "42501", "message": msg}),
            );
        }
        t.kill = Some(msg);
        true
    }

    /// The message a client gets for a refused statement.
    fn refusal(&self, s: &Stmt) -> String {
        let rule = &s.decision.rule;
        match (s.decision.outcome, rule.as_str()) {
            (Outcome::Hold, _) => format!(
                "Portcullis: this statement requires approval under rule `{rule}` (target {}); approvals cannot be granted on this agent yet, so it is refused",
                self.ctx.target.name
            ),
            (_, AUDIT_UNAVAILABLE) => format!(
                "Portcullis: statement refused: the audit log is not accepting records ({}); access resumes when it recovers",
                self.ctx
                    .shared
                    .audit
                    .problem()
                    .unwrap_or_else(|| "unavailable".into())
            ),
            (_, "unparseable") => format!(
                "Portcullis: statement refused: it could not be parsed ({}), and target {} refuses what cannot be checked",
                s.parse_error.as_deref().unwrap_or("parse error"),
                self.ctx.target.name
            ),
            (_, PINNED_SETTING | UNKNOWN_PORTAL | PREPARED_LIMIT) => format!(
                "Portcullis: statement refused: {}",
                s.parse_error
                    .as_deref()
                    .unwrap_or("it changes a pinned setting")
            ),
            (_, UNKNOWN_PREPARED) => format!(
                "Portcullis: statement refused: {}",
                s.parse_error
                    .as_deref()
                    .unwrap_or("unknown prepared statement")
            ),
            _ => format!(
                "Portcullis: statement refused by rule `{rule}` (target {}){}",
                self.ctx.target.name,
                s.decision
                    .reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// The `statement` record, written when the statement is decided: with
    /// outcome `forwarded` for a statement sent to the server (its
    /// `statement_outcome` record follows when the response ends), else the
    /// final outcome (`refused`, `not_executed`). False when the record could
    /// not be queued.
    fn audit(
        &self,
        s: &Stmt,
        outcome: &str,
        rows: Option<u64>,
        duration: Option<Duration>,
        err: Option<&codec::Notice>,
    ) -> bool {
        let mut m = self.record_base.clone();
        m.insert("statement_seq".into(), s.seq.into());
        let fingerprint_only =
            self.ctx.target.statement_text == policy::spec::StatementText::Fingerprint;
        let fp = s.info.as_ref().map(|i| i.fingerprint.clone());
        if fingerprint_only {
            m.insert(
                "statement".into(),
                fp.clone().map_or(Value::Null, Value::String),
            );
        } else {
            m.insert("statement".into(), s.text.to_string().into());
        }
        m.insert("fingerprint".into(), fp.map_or(Value::Null, Value::String));
        m.insert("message".into(), s.protocol.into());
        if let Some(n) = &s.name {
            m.insert("prepared_name".into(), n.clone().into());
        }
        if let Some(f) = &s.facts
            && let Ok(Value::Object(fm)) = serde_json::to_value(f)
        {
            m.extend(fm);
        }
        if let Some(i) = &s.info
            && !i.dangerous.is_empty()
        {
            m.insert("dangerous".into(), json!(i.dangerous));
        }
        if let Some(e) = &s.parse_error {
            m.insert("parse_error".into(), e.clone().into());
        }
        m.insert("decision".into(), s.decision.label().into());
        m.insert("rule".into(), s.decision.rule.clone().into());
        if let Some(r) = &s.decision.reason {
            m.insert("reason".into(), r.clone().into());
        }
        if !s.decision.grants.is_empty() {
            m.insert("grants".into(), json!(s.decision.grants));
        }
        m.insert("mode".into(), json!(s.decision.mode));
        m.insert("policy_hash".into(), s.policy_hash.to_string().into());
        outcome_fields(&mut m, outcome, rows, duration, err);
        if let Err(e) = self.ctx.shared.audit.record("statement", Value::Object(m)) {
            tracing::error!(error = %e, session = %self.ctx.session_id, "statement audit record lost");
            return false;
        }
        true
    }

    /// Decision records of statements about to be forwarded; false when one
    /// could not be written (the statements are then refused: no access
    /// without evidence).
    fn audit_forwarded(&self, stmts: &[Arc<Stmt>]) -> bool {
        stmts
            .iter()
            .all(|s| self.audit(s, "forwarded", None, None, None))
    }

    /// The `statement_outcome` record of a forwarded statement: how its
    /// response ended (`ok`, `error`, `not_executed`, `incomplete`).
    fn audit_outcome(
        &self,
        s: &Stmt,
        outcome: &str,
        rows: Option<u64>,
        duration: Option<Duration>,
        err: Option<&codec::Notice>,
    ) {
        let mut m = Map::new();
        for k in [
            "session_id",
            "target",
            "protocol",
            "attribution",
            "workloads",
        ] {
            if let Some(v) = self.record_base.get(k) {
                m.insert(k.into(), v.clone());
            }
        }
        m.insert("statement_seq".into(), s.seq.into());
        if let Some(f) = &s.facts {
            m.insert("kinds".into(), json!(f.kinds));
        }
        m.insert("decision".into(), s.decision.label().into());
        m.insert("rule".into(), s.decision.rule.clone().into());
        outcome_fields(&mut m, outcome, rows, duration, err);
        if let Err(e) = self
            .ctx
            .shared
            .audit
            .record("statement_outcome", Value::Object(m))
        {
            tracing::error!(error = %e, session = %self.ctx.session_id, "statement outcome record lost");
        }
    }

    /// At the end of the session: an `incomplete` outcome for every statement
    /// forwarded whose response never ended (the client or the server went away).
    fn incomplete(&self, end: &str) {
        let mut t = lock(&self.track);
        let ops = std::mem::take(&mut t.ops);
        drop(t);
        let why = codec::Notice {
            severity: "FATAL".into(),
            sqlstate: String::new(),
            message: format!("the session ended ({end}) before the statement's response did"),
        };
        for op in ops {
            let pending: Vec<(Arc<Stmt>, Option<u64>)> = match op {
                Op::Simple {
                    stmts,
                    next,
                    cur,
                    refused: None,
                    ..
                } => {
                    let mut v: Vec<(Arc<Stmt>, Option<u64>)> = Vec::new();
                    if let Some(run) = cur {
                        v.push((run.stmt.clone(), Some(run.rows)));
                    }
                    let start = next + usize::from(!v.is_empty());
                    v.extend(stmts.iter().skip(start).map(|s| (s.clone(), None)));
                    v
                }
                Op::Execute { run: Some(run), .. } | Op::Function { run: Some(run), .. } => {
                    vec![(run.stmt.clone(), Some(run.rows))]
                }
                _ => Vec::new(),
            };
            for (s, rows) in pending {
                self.audit_outcome(&s, "incomplete", rows, None, Some(&why));
            }
        }
    }

    fn record_request(&self, t: &mut Track, s: &Stmt) {
        if let Some(r) = t.recorder.as_mut() {
            r.event(
                "request",
                json!({
                    "protocol": "postgres",
                    "message": s.protocol,
                    "text": &*s.text,
                    "kinds": s.facts.as_ref().map(|f| json!(f.kinds)),
                    "decision": s.decision.label(),
                    "rule": s.decision.rule,
                }),
            );
        }
    }

    /// A statement's result: the session's SQL state follows it at once; its
    /// recording and audit record wait in `t.done` until the response has been
    /// written to the client (see `drain_done`), so they are not on its latency.
    fn complete(
        &self,
        t: &mut Track,
        run: Running,
        tag: Option<&str>,
        rows: Option<u64>,
        err: Option<&codec::Notice>,
    ) {
        if err.is_none()
            && let Some(i) = &run.stmt.info
        {
            t.sql.completed(i);
        }
        let duration = run.started.elapsed();
        t.done.push(Done {
            rows: rows.or(Some(run.rows)),
            run,
            tag: tag.map(str::to_string),
            err: err.cloned(),
            duration,
        });
    }

    /// Records and audits the statements completed since the last call.
    fn drain_done(&self) {
        let mut t = lock(&self.track);
        let done = std::mem::take(&mut t.done);
        let withhold = t.withhold_values;
        for d in done {
            if let Some(r) = t.recorder.as_mut() {
                match &d.err {
                    Some(e) => r.event(
                        "error",
                        json!({"severity": e.severity, "sqlstate": e.sqlstate, "message": e.message}),
                    ),
                    None => {
                        let mut ev = json!({
                            "columns": d.run.columns.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                            "rows": d.run.kept,
                            "tag": d.tag,
                            "rows_total": d.run.rows,
                            "rows_omitted": d.run.rows.saturating_sub(d.run.kept.len() as u64),
                        });
                        if withhold {
                            ev["values_withheld"] = WITHHELD.into();
                        }
                        r.event("response", ev)
                    }
                }
            }
            let outcome = if d.err.is_some() { "error" } else { "ok" };
            self.audit_outcome(
                &d.run.stmt,
                outcome,
                d.rows,
                Some(d.duration),
                d.err.as_ref(),
            );
        }
    }

    // ---- the session loop -----------------------------------------------------------------

    /// Moves messages both ways in one task: reads from either side while the
    /// bytes waiting for the other side stay under a bound, writes whatever is
    /// waiting. One task means no wake-up hand-over between directions; the bound
    /// means neither side can make the agent buffer without limit.
    /// Returns (result, bytes to the server, bytes to the client, how it ended).
    async fn pump(
        &self,
        client: Stream,
        upstream: Stream,
    ) -> (Result<(), String>, u64, u64, &'static str) {
        const HIGH: usize = 256 * 1024;
        let max = self.ctx.shared.cfg.pg_max_message_bytes;
        let idle = match self.ctx.shared.cfg.idle_timeout_secs {
            0 => None,
            s => Some(Duration::from_secs(s)),
        };
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut ur, mut uw) = tokio::io::split(upstream);
        let mut cbuf = BytesMut::with_capacity(16 * 1024);
        let mut ubuf = BytesMut::with_capacity(16 * 1024);
        let mut to_up = BytesMut::with_capacity(16 * 1024);
        let mut to_client = BytesMut::with_capacity(16 * 1024);
        let (mut up_bytes, mut down_bytes) = (0u64, 0u64);
        // The client stopped sending (Terminate or EOF): finish writing to the
        // server, then half-close it and wait for the server to close.
        let mut client_done: Option<&'static str> = None;
        let mut up_shut = false;
        let mut last = Instant::now();
        let result: Result<(), String>;
        let end: &'static str;
        loop {
            // Complete messages in, decided and translated out. Bytes the codec
            // does not understand (from either side) end the session: the
            // client gets a FATAL error saying why.
            // (message for the client, error for the record, how it ended)
            let mut broken: Option<(String, String, &'static str, &'static str)> = None;
            while client_done.is_none() {
                let step = codec::try_frame(&mut cbuf, max).and_then(|f| match f {
                    Some(f) => self.on_client_frame(&f, &mut to_up).map(Some),
                    None => Ok(None),
                });
                match step {
                    Ok(Some(true)) => {}
                    Ok(Some(false)) => client_done = Some("terminated"),
                    Ok(None) => break,
                    Err(e) => {
                        let msg = self.protocol_violation(e);
                        broken = Some((msg.clone(), msg, "protocol_error", "08P01"));
                        break;
                    }
                }
            }
            while broken.is_none() {
                let step = codec::try_frame(&mut ubuf, max)
                    .map_err(|e| format!("protocol violation from the server: {e}"))
                    .and_then(|f| match f {
                        Some(f) => {
                            let tag = f.tag;
                            self.on_server_frame(f, &mut to_client).map(|()| Some(tag))
                        }
                        None => Ok(None),
                    });
                match step {
                    Ok(Some(b'S')) => {
                        let mut t = lock(&self.track);
                        if let Some(why) = t.unsafe_setting.take() {
                            if let Some(r) = t.recorder.as_mut() {
                                r.event(
                                    "error",
                                    json!({"severity": "FATAL", "sqlstate": "42501", "message": why}),
                                );
                            }
                            broken = Some((why.clone(), why, "unsafe_setting", "42501"));
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        let msg = "the server sent bytes the agent does not understand".into();
                        broken = Some((msg, e, "error", "08P01"));
                    }
                }
            }
            if let Some((msg, err, how, sqlstate)) = broken {
                codec::error_response(
                    &mut to_client,
                    "FATAL",
                    sqlstate,
                    &format!("Portcullis: {msg}; the session is closed"),
                );
                let _ = cw.write_all(&to_client).await;
                let _ = cw.shutdown().await;
                return (Err(err), up_bytes, down_bytes + to_client.len() as u64, how);
            }
            if !lock(&self.track).done.is_empty() {
                // The client gets its answer first; the evidence follows at once,
                // before anything else is read.
                if !to_client.is_empty() {
                    match cw.write_all(&to_client).await {
                        Ok(()) => {
                            down_bytes += to_client.len() as u64;
                            to_client.clear();
                        }
                        Err(e) => {
                            self.drain_done();
                            return (
                                Err(format!("write to client: {e}")),
                                up_bytes,
                                down_bytes,
                                "error",
                            );
                        }
                    }
                }
                self.drain_done();
            }
            let killed = lock(&self.track).kill.take();
            if let Some(msg) = killed {
                // What was decided before goes out; then both sides are closed.
                let _ = uw.write_all(&to_up).await;
                up_bytes += to_up.len() as u64;
                let _ = uw.shutdown().await;
                codec::error_response(&mut to_client, "FATAL", "42501", &msg);
                let _ = cw.write_all(&to_client).await;
                down_bytes += to_client.len() as u64;
                let _ = cw.shutdown().await;
                return (Ok(()), up_bytes, down_bytes, "killed");
            }
            if client_done.is_some() && to_up.is_empty() && !up_shut {
                let _ = uw.shutdown().await;
                up_shut = true;
            }
            let deadline = idle.map(|d| last + d);
            tokio::select! {
                biased;
                r = uw.write(&to_up), if !to_up.is_empty() => match r {
                    Ok(n) => {
                        to_up.advance(n);
                        up_bytes += n as u64;
                    }
                    Err(e) => {
                        result = Err(format!("write to server: {e}"));
                        end = "error";
                        break;
                    }
                },
                r = cw.write(&to_client), if !to_client.is_empty() => match r {
                    Ok(n) => {
                        to_client.advance(n);
                        down_bytes += n as u64;
                    }
                    Err(e) => {
                        result = Err(format!("write to client: {e}"));
                        end = "error";
                        break;
                    }
                },
                r = cr.read_buf(&mut cbuf), if client_done.is_none() && to_up.len() < HIGH => match r {
                    Ok(0) => client_done = Some("closed"),
                    Ok(_) => last = Instant::now(),
                    Err(e) => {
                        result = Err(format!("read from client: {e}"));
                        end = "error";
                        break;
                    }
                },
                r = ur.read_buf(&mut ubuf), if to_client.len() < HIGH => match r {
                    Ok(0) => {
                        // The server closed: pass on what is left, then close.
                        let _ = cw.write_all(&to_client).await;
                        down_bytes += to_client.len() as u64;
                        let _ = cw.shutdown().await;
                        result = Ok(());
                        end = client_done.unwrap_or("upstream_closed");
                        break;
                    }
                    Ok(_) => last = Instant::now(),
                    Err(e) => {
                        result = Err(format!("read from server: {e}"));
                        end = "error";
                        break;
                    }
                },
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    result = Ok(());
                    end = "idle_timeout";
                    break;
                }
            }
        }
        (result, up_bytes, down_bytes, end)
    }

    /// Bytes the codec does not understand end the session: the recording and
    /// the connection record say why; the caller tells the client.
    fn protocol_violation(&self, e: CodecError) -> String {
        let msg = format!("{CLIENT_VIOLATION}: {e}");
        if let Some(r) = lock(&self.track).recorder.as_mut() {
            r.event(
                "error",
                json!({"severity": "FATAL", "sqlstate": "08P01", "message": msg}),
            );
        }
        msg
    }

    /// Handles one client message; `Ok(false)` after Terminate.
    fn on_client_frame(&self, f: &Frame, out: &mut BytesMut) -> Result<bool, CodecError> {
        let msg = codec::front(f)?;
        let mut t = lock(&self.track);
        match msg {
            Front::Query(text) => {
                let stmts = self.check(&mut t, text, "simple", None);
                let mut refused = deciding_refusal(&stmts);
                if refused.is_none() && !self.audit_forwarded(&stmts) {
                    refused = Some(self.refuse_as(
                        text,
                        "simple",
                        None,
                        AUDIT_UNAVAILABLE,
                        "the audit log did not take the statement's record".into(),
                    ));
                }
                t.statements += stmts.len() as u64;
                for s in &stmts {
                    self.record_request(&mut t, s);
                }
                match refused {
                    Some(first) => {
                        t.denied += 1;
                        for s in &stmts {
                            let outcome = if Arc::ptr_eq(s, &first) {
                                "refused"
                            } else {
                                "not_executed"
                            };
                            self.audit(s, outcome, None, None, None);
                        }
                        if self.kill(&mut t, &first) {
                            return Ok(false);
                        }
                        codec::query(out, DENIED_SQL);
                        t.ops.push_back(Op::Simple {
                            stmts: Vec::new(),
                            next: 0,
                            cur: None,
                            refused: Some(first),
                            failed: false,
                        });
                    }
                    None => {
                        f.encode(out);
                        t.ops.push_back(Op::Simple {
                            stmts,
                            next: 0,
                            cur: None,
                            refused: None,
                            failed: false,
                        });
                    }
                }
            }
            Front::Parse { name, query } => {
                let analysis = self.ctx.shared.pg.analyzer.analyze(query);
                let stmts = self.check_analysis(&mut t, query, &analysis, "parse", Some(name));
                let mut refused = deciding_refusal(&stmts);
                let mut before = None;
                if refused.is_none() {
                    let p = Arc::new(Prepared {
                        text: Arc::from(query),
                        analysis: analysis.clone(),
                    });
                    match t.sql.prepare(name, p) {
                        Ok(b) => before = Some(b),
                        Err(why) => {
                            refused = Some(self.refuse_as(
                                query,
                                "parse",
                                Some(name),
                                PREPARED_LIMIT,
                                why,
                            ))
                        }
                    }
                }
                match refused {
                    Some(s) => {
                        t.denied += 1;
                        t.statements += 1;
                        self.record_request(&mut t, &s);
                        self.audit(&s, "refused", None, None, None);
                        if self.kill(&mut t, &s) {
                            return Ok(false);
                        }
                        codec::parse(out, DENIED_NAME, DENIED_SQL);
                        t.ops.push_back(Op::Parse {
                            refused: Some(s),
                            restore: None,
                        });
                    }
                    None => {
                        f.encode(out);
                        t.ops.push_back(Op::Parse {
                            refused: None,
                            restore: before.map(|b| (name.to_string(), b)),
                        });
                    }
                }
            }
            Front::Bind {
                portal,
                statement,
                result_formats,
            } => {
                let prepared = t.sql.prepared(statement).cloned();
                t.portals.insert(
                    portal.to_string(),
                    Portal {
                        prepared,
                        statement: statement.to_string(),
                        formats: result_formats,
                    },
                );
                f.encode(out);
                t.ops.push_back(Op::Bind);
            }
            Front::Execute { portal, .. } => {
                // Enforced here, with the policy in force now: the statement was
                // classified at Parse.
                let p = t
                    .portals
                    .get(portal)
                    .map(|p| (p.prepared.clone(), p.statement.clone(), p.formats.clone()));
                match p {
                    Some((Some(prep), name, formats)) => {
                        let stmts = self.check_analysis(
                            &mut t,
                            &prep.text.clone(),
                            &prep.analysis.clone(),
                            "extended",
                            Some(&name),
                        );
                        t.statements += 1;
                        let mut refused = deciding_refusal(&stmts);
                        let Some(first) = stmts.first().cloned() else {
                            // An empty statement: the server answers EmptyQueryResponse.
                            f.encode(out);
                            t.ops.push_back(Op::Execute {
                                run: None,
                                refused: None,
                            });
                            return Ok(true);
                        };
                        self.record_request(&mut t, &first);
                        if refused.is_none() && !self.audit_forwarded(std::slice::from_ref(&first))
                        {
                            refused = Some(self.refuse_as(
                                &prep.text,
                                "extended",
                                Some(&name),
                                AUDIT_UNAVAILABLE,
                                "the audit log did not take the statement's record".into(),
                            ));
                        }
                        match refused {
                            Some(s) => {
                                t.denied += 1;
                                self.audit(&s, "refused", None, None, None);
                                if self.kill(&mut t, &s) {
                                    return Ok(false);
                                }
                                codec::parse(out, DENIED_NAME, DENIED_SQL);
                                t.ops.push_back(Op::Execute {
                                    run: None,
                                    refused: Some(s),
                                });
                            }
                            None => {
                                f.encode(out);
                                t.ops.push_back(Op::Execute {
                                    run: Some(Running::new(first, formats)),
                                    refused: None,
                                });
                            }
                        }
                    }
                    _ => {
                        // A portal the agent did not see bound to a statement it
                        // knows (a cursor opened by SQL DECLARE is one): what it
                        // would run is not known, so it is refused.
                        let s = self.refuse_as(
                            &format!("-- Execute of portal `{portal}`"),
                            "extended",
                            Some(portal),
                            UNKNOWN_PORTAL,
                            format!(
                                "Execute of portal `{portal}`, which the agent did not see bound to a statement it decided"
                            ),
                        );
                        t.statements += 1;
                        t.denied += 1;
                        self.record_request(&mut t, &s);
                        self.audit(&s, "refused", None, None, None);
                        codec::parse(out, DENIED_NAME, DENIED_SQL);
                        t.ops.push_back(Op::Execute {
                            run: None,
                            refused: Some(s),
                        });
                    }
                }
            }
            Front::Describe { .. } => {
                f.encode(out);
                t.ops.push_back(Op::Describe);
            }
            Front::Close { kind, name } => {
                if kind == b'S' {
                    t.sql.close(name);
                } else {
                    t.portals.remove(name);
                }
                f.encode(out);
                t.ops.push_back(Op::Close);
            }
            Front::Sync => {
                // The unnamed portal does not outlive the transaction; forgetting
                // it here is harmless (a later Execute of it is forwarded as is).
                f.encode(out);
                t.ops.push_back(Op::Sync);
            }
            Front::Flush | Front::CopyData | Front::CopyDone | Front::CopyFail => f.encode(out),
            Front::Terminate => {
                f.encode(out);
                return Ok(false);
            }
            Front::FunctionCall { oid } => {
                // The function is named by OID only (it could be any function,
                // pg_read_file included): decided as text the agent cannot check,
                // so refused unless the target's `defaults.unparseable` is allow.
                let (decision, policy_hash) = self.decide(None);
                let s = Arc::new(Stmt {
                    text: Arc::from(format!("-- FunctionCall oid {oid}")),
                    info: None,
                    facts: None,
                    parse_error: Some(format!(
                        "a FunctionCall message names function {oid} by OID, which the agent cannot check"
                    )),
                    decision,
                    policy_hash,
                    protocol: "function_call",
                    name: None,
                    seq: self.next_seq(),
                });
                t.statements += 1;
                self.record_request(&mut t, &s);
                if s.refused() {
                    t.denied += 1;
                    self.audit(&s, "refused", None, None, None);
                    if self.kill(&mut t, &s) {
                        return Ok(false);
                    }
                    codec::query(out, DENIED_SQL);
                    t.ops.push_back(Op::Function {
                        run: None,
                        refused: Some(s),
                        failed: false,
                    });
                } else {
                    self.audit(&s, "forwarded", None, None, None);
                    f.encode(out);
                    t.ops.push_back(Op::Function {
                        run: Some(Running::new(s, vec![1])),
                        refused: None,
                        failed: false,
                    });
                }
            }
            Front::Password => {
                return Err(CodecError::Malformed {
                    what: "password",
                    why: "a password message after login",
                });
            }
        }
        Ok(true)
    }

    fn on_server_frame(&self, f: Frame, out: &mut BytesMut) -> Result<(), String> {
        let mut t = lock(&self.track);
        let t = &mut *t;
        match f.tag {
            b'D' => {
                let keep = t.recorder.is_some() && !t.withhold_values;
                match t.ops.front_mut() {
                    Some(Op::Simple { cur: Some(run), .. })
                    | Some(Op::Execute { run: Some(run), .. }) => {
                        run.rows += 1;
                        if keep
                            && run.kept.len() < RECORDED_ROWS
                            && let Ok(vals) = codec::data_row(&f.body)
                        {
                            let row: Vec<Value> = vals
                                .iter()
                                .enumerate()
                                .map(|(i, v)| {
                                    let fmt = if run.columns.is_empty() {
                                        format_of(&run.formats, i)
                                    } else {
                                        run.columns
                                            .get(i)
                                            .map(|c| c.1)
                                            .unwrap_or(0)
                                            .max(format_of(&run.formats, i))
                                    };
                                    value_json(*v, fmt)
                                })
                                .collect();
                            run.kept.push(Value::Array(row));
                        }
                    }
                    Some(Op::Simple {
                        cur: cur @ None,
                        stmts,
                        next,
                        ..
                    }) => {
                        // Rows without a RowDescription first (not expected).
                        if let Some(s) = stmts.get(*next) {
                            let mut run = Running::new(s.clone(), Vec::new());
                            run.rows = 1;
                            *cur = Some(run);
                        }
                    }
                    _ => {}
                }
                f.encode(out);
            }
            b'T' => {
                match t.ops.front_mut() {
                    Some(Op::Describe) => {
                        t.ops.pop_front();
                    }
                    Some(Op::Simple {
                        cur, stmts, next, ..
                    }) => {
                        if cur.is_none()
                            && let Some(s) = stmts.get(*next)
                        {
                            *cur = Some(Running::new(s.clone(), Vec::new()));
                        }
                        if let Some(run) = cur {
                            run.columns = codec::row_description(&f.body).unwrap_or_default();
                        }
                    }
                    Some(Op::Execute { run: Some(run), .. }) => {
                        run.columns = codec::row_description(&f.body).unwrap_or_default();
                    }
                    _ => {}
                }
                f.encode(out);
            }
            b'C' | b'I' | b's' => {
                let (tag, rows) = if f.tag == b'C' {
                    let (tag, rows) = codec::command_tag(&f.body);
                    (Some(tag.to_string()), rows)
                } else {
                    (None, None)
                };
                match t.ops.front_mut() {
                    Some(Op::Simple {
                        cur, stmts, next, ..
                    }) => {
                        let run = cur.take().or_else(|| {
                            stmts
                                .get(*next)
                                .map(|s| Running::new(s.clone(), Vec::new()))
                        });
                        *next += 1;
                        if let Some(run) = run {
                            self.complete(t, run, tag.as_deref(), rows, None);
                        }
                    }
                    Some(Op::Execute { .. }) => {
                        if let Some(Op::Execute { run: Some(run), .. }) = t.ops.pop_front() {
                            self.complete(t, run, tag.as_deref(), rows, None);
                        }
                    }
                    _ => {}
                }
                f.encode(out);
            }
            b'E' => {
                let n = codec::parse_notice(&f.body);
                let mut replaced = false;
                match t.ops.front_mut() {
                    Some(Op::Simple {
                        refused: Some(s),
                        failed,
                        ..
                    })
                    | Some(Op::Function {
                        refused: Some(s),
                        failed,
                        ..
                    }) => {
                        let msg = self.refusal(s);
                        let code = refusal_sqlstate(s);
                        codec::error_response(out, "ERROR", code, &msg);
                        if let Some(r) = t.recorder.as_mut() {
                            r.event(
                                "error",
                                json!({"severity": "ERROR", "sqlstate": code, "message": msg}),
                            );
                        }
                        *failed = true;
                        replaced = true;
                    }
                    Some(Op::Simple {
                        cur,
                        stmts,
                        next,
                        failed,
                        ..
                    }) => {
                        let run = cur.take().or_else(|| {
                            stmts
                                .get(*next)
                                .map(|s| Running::new(s.clone(), Vec::new()))
                        });
                        let rest: Vec<Arc<Stmt>> = stmts.iter().skip(*next + 1).cloned().collect();
                        *next = stmts.len();
                        *failed = true;
                        if let Some(run) = run {
                            self.complete(t, run, None, None, Some(&n));
                        }
                        for s in rest {
                            self.audit_outcome(&s, "not_executed", None, None, None);
                        }
                    }
                    Some(Op::Function { run, failed, .. }) => {
                        *failed = true;
                        if let Some(run) = run.take() {
                            self.complete(t, run, None, None, Some(&n));
                        }
                    }
                    Some(_) => {
                        // Extended protocol: the failing message, then everything up
                        // to Sync is skipped by the server.
                        let first = t.ops.pop_front();
                        match first {
                            Some(Op::Parse {
                                refused: Some(s), ..
                            })
                            | Some(Op::Execute {
                                refused: Some(s), ..
                            }) => {
                                let msg = self.refusal(&s);
                                let code = refusal_sqlstate(&s);
                                codec::error_response(out, "ERROR", code, &msg);
                                if let Some(r) = t.recorder.as_mut() {
                                    r.event("error", json!({"severity": "ERROR", "sqlstate": code, "message": msg}));
                                }
                                replaced = true;
                            }
                            Some(Op::Execute { run: Some(run), .. }) => {
                                self.complete(t, run, None, None, Some(&n))
                            }
                            Some(Op::Parse {
                                restore: Some((name, before)),
                                ..
                            }) => t.restore(name, before),
                            _ => {}
                        }
                        while let Some(op) = t.ops.front() {
                            if matches!(op, Op::Sync) {
                                break;
                            }
                            if let Some(Op::Parse {
                                restore: Some((name, before)),
                                ..
                            }) = t.ops.pop_front()
                            {
                                t.restore(name, before);
                            }
                        }
                    }
                    None => {
                        // An error outside any request: FATAL from the server (shutdown,
                        // terminated backend). Passed on.
                        if let Some(r) = t.recorder.as_mut() {
                            r.event("error", json!({"severity": n.severity, "sqlstate": n.sqlstate, "message": n.message}));
                        }
                    }
                }
                if !replaced {
                    f.encode(out);
                }
            }
            b'Z' => {
                match t.ops.pop_front() {
                    Some(Op::Simple {
                        stmts, next, cur, ..
                    }) => {
                        if let Some(run) = cur {
                            self.complete(t, run, None, None, None);
                        }
                        for s in stmts.iter().skip(next) {
                            // Statements the server never reported on.
                            self.audit_outcome(s, "not_executed", None, None, None);
                        }
                    }
                    Some(Op::Function {
                        run: Some(run),
                        failed: false,
                        ..
                    }) => self.complete(t, run, None, None, None),
                    _ => {}
                }
                f.encode(out);
            }
            b'1' | b'2' | b'3' | b'n' => {
                if matches!(
                    t.ops.front(),
                    Some(Op::Parse { .. } | Op::Bind | Op::Close | Op::Describe)
                ) {
                    t.ops.pop_front();
                }
                f.encode(out);
            }
            b'N' => {
                if let Some(r) = t.recorder.as_mut() {
                    let n = codec::parse_notice(&f.body);
                    r.event("notice", json!({"severity": n.severity, "sqlstate": n.sqlstate, "message": n.message}));
                }
                f.encode(out);
            }
            b'G' | b'H' | b'W' => {
                if let Some(r) = t.recorder.as_mut() {
                    r.event(
                        "copy",
                        json!({"direction": if f.tag == b'G' { "in" } else { "out" }}),
                    );
                }
                f.encode(out);
            }
            b'V' => {
                if let Some(Op::Function { run: Some(run), .. }) = t.ops.front_mut() {
                    run.rows = 1;
                }
                f.encode(out);
            }
            b'S' => match super::startup::unsafe_parameter_status(&f.body) {
                // Not passed on: the session ends here.
                Some(why) => t.unsafe_setting = Some(why),
                None => {
                    // Servers that report search_path (not 15) say when code the
                    // agent cannot see changed it.
                    let mut r = codec::Reader::new(&f.body);
                    if r.cstr("ParameterStatus") == Ok("search_path")
                        && let Ok(v) = r.cstr("ParameterStatus")
                    {
                        t.sql.server_search_path(v);
                    }
                    f.encode(out)
                }
            },
            b't' | b'd' | b'c' | b'A' | b'K' => f.encode(out),
            other => {
                return Err(format!(
                    "protocol violation from the server: unexpected message {:?}",
                    other as char
                ));
            }
        }
        Ok(())
    }
}

/// How a statement ended, in its audit record: `outcome`, and `rows`,
/// `duration_us`, `sqlstate` and `error` where known.
fn outcome_fields(
    m: &mut Map<String, Value>,
    outcome: &str,
    rows: Option<u64>,
    duration: Option<Duration>,
    err: Option<&codec::Notice>,
) {
    m.insert("outcome".into(), outcome.into());
    if let Some(r) = rows {
        m.insert("rows".into(), r.into());
    }
    if let Some(d) = duration {
        m.insert("duration_us".into(), (d.as_micros() as u64).into());
    }
    if let Some(e) = err {
        if !e.sqlstate.is_empty() {
            m.insert("sqlstate".into(), e.sqlstate.clone().into());
        }
        m.insert("error".into(), e.message.clone().into());
    }
}
