//! The answer to a connection on a PostgreSQL target that is refused before its
//! session (by the connection policy, or because the agent cannot give access
//! with evidence): what a server tells a client it will not serve. The client's
//! opening is read as the session reads it ([`super::opening`]: TLS if the agent
//! terminates client TLS for the target, `N` otherwise), then one ErrorResponse
//! of severity FATAL, then the connection is closed. A CancelRequest is closed
//! without an answer, as the server closes it. Nothing is sent upstream: the
//! server never sees a refused connection.
//!
//! Bounded in time ([`ANSWER_TIMEOUT`]: a silent client is closed), in size (a
//! startup packet over [`super::codec::MAX_STARTUP`] bytes is not buffered), and
//! in number ([`MAX_PENDING`] at once; beyond it a refused connection is closed
//! at once).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::codec;
use super::opening::{self, Opening};

/// How long a refused client has to send its startup (and finish a TLS
/// handshake) before the connection is closed without an answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Refused connections answered at once, at most.
pub const MAX_PENDING: usize = 256;

/// Why a connection is refused, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `28000` for policy refusals, `53300` beyond `max_connections`, `53000`
    /// while the agent cannot keep evidence.
    pub sqlstate: &'static str,
    pub message: String,
}

/// How the answer went (for the agent's log; the audit record is already
/// written when it runs).
#[derive(Debug, PartialEq, Eq)]
pub enum Answered {
    /// The client got the FATAL ErrorResponse.
    Told,
    /// It was a CancelRequest: closed without an answer.
    Cancel,
}

/// Reads the opening of the refused connection `tcp` and answers it with
/// `refusal` (see the module header). Bounded by [`ANSWER_TIMEOUT`].
pub async fn answer(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    refusal: &Refusal,
) -> Result<Answered, String> {
    answer_within(tcp, tls, refusal, ANSWER_TIMEOUT).await
}

async fn answer_within(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    refusal: &Refusal,
    limit: Duration,
) -> Result<Answered, String> {
    match tokio::time::timeout(limit, answer_unbounded(tcp, tls, refusal)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the client sent no startup within {} ms",
            limit.as_millis()
        )),
    }
}

async fn answer_unbounded(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    refusal: &Refusal,
) -> Result<Answered, String> {
    let _ = tcp.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(1024);
    let mut client = match opening::read(tcp, &mut buf, tls).await {
        Ok((client, Opening::Params { .. })) => client,
        Ok((_, Opening::Cancel { .. })) => return Ok(Answered::Cancel),
        // A startup the server would not read either: it gets the refusal if it
        // can still be told (the server would answer with a protocol error).
        Err(e) => match e.client {
            Some(c) => c,
            None => return Err(e.detail),
        },
    };
    let mut out = BytesMut::new();
    codec::error_response(&mut out, "FATAL", refusal.sqlstate, &refusal.message);
    client
        .write_all(&out)
        .await
        .map_err(|e| format!("sending the refusal: {e}"))?;
    let _ = client.shutdown().await;
    Ok(Answered::Told)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn refusal() -> Refusal {
        Refusal {
            sqlstate: "28000",
            message: "Portcullis: connection refused by rule `default-deny`".into(),
        }
    }

    /// A listener answering one connection with [`answer`]; the client side.
    async fn pair() -> (TcpStream, tokio::task::JoinHandle<Result<Answered, String>>) {
        pair_within(ANSWER_TIMEOUT).await
    }

    async fn pair_within(
        limit: Duration,
    ) -> (TcpStream, tokio::task::JoinHandle<Result<Answered, String>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            answer_within(s, None, &refusal(), limit).await
        });
        (TcpStream::connect(addr).await.expect("connect"), server)
    }

    fn startup_packet() -> BytesMut {
        let mut b = BytesMut::new();
        codec::startup(
            &mut b,
            codec::PROTOCOL_3_0,
            &[
                ("user".into(), "app".into()),
                ("database".into(), "app".into()),
            ],
        );
        b
    }

    /// Every typed message the agent sent before closing: (tag, body).
    async fn read_all(c: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
        let mut all = Vec::new();
        c.read_to_end(&mut all).await.expect("read");
        let mut msgs = Vec::new();
        let mut b = BytesMut::from(&all[..]);
        while let Ok(Some(f)) = codec::try_frame(&mut b, 1 << 20) {
            msgs.push((f.tag, f.body.to_vec()));
        }
        assert!(b.is_empty(), "bytes after the last message: {b:?}");
        msgs
    }

    #[tokio::test]
    async fn an_ssl_request_gets_n_then_the_startup_gets_one_fatal() {
        let (mut c, server) = pair().await;
        let mut b = BytesMut::new();
        codec::ssl_request(&mut b);
        c.write_all(&b).await.expect("write");
        let mut n = [0u8; 1];
        c.read_exact(&mut n).await.expect("read");
        assert_eq!(&n, b"N");
        c.write_all(&startup_packet()).await.expect("write");
        let msgs = read_all(&mut c).await;
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(msgs[0].0, b'E');
        let e = codec::parse_notice(&msgs[0].1);
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.sqlstate, "28000");
        assert!(e.message.contains("default-deny"), "{}", e.message);
        assert_eq!(server.await.expect("join"), Ok(Answered::Told));
    }

    #[tokio::test]
    async fn a_cancel_request_is_closed_without_an_answer() {
        let (mut c, server) = pair().await;
        let mut b = BytesMut::new();
        codec::cancel_request(&mut b, 1234, 5678);
        c.write_all(&b).await.expect("write");
        assert!(read_all(&mut c).await.is_empty());
        assert_eq!(server.await.expect("join"), Ok(Answered::Cancel));
    }

    #[tokio::test]
    async fn an_oversized_startup_is_not_buffered_and_still_refused() {
        let (mut c, server) = pair().await;
        // A length prefix of 1 GiB: refused on the prefix, before any buffering.
        c.write_all(&(1i32 << 30).to_be_bytes())
            .await
            .expect("write");
        c.write_all(&codec::PROTOCOL_3_0.to_be_bytes())
            .await
            .expect("write");
        let msgs = read_all(&mut c).await;
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(codec::parse_notice(&msgs[0].1).sqlstate, "28000");
        assert_eq!(server.await.expect("join"), Ok(Answered::Told));
    }

    #[tokio::test]
    async fn a_silent_client_is_closed_after_the_timeout() {
        // A short bound so the test does not wait; what is checked is the
        // outcome, not the time it took.
        let (mut c, server) = pair_within(Duration::from_millis(50)).await;
        let r = server.await.expect("join");
        assert!(r.is_err_and(|e| e.contains("no startup")));
        assert!(read_all(&mut c).await.is_empty());
    }
}
