//! The client's first packets, as the server reads them: at most one encryption
//! negotiation (an SSLRequest answered `S` and a TLS handshake when the agent
//! terminates client TLS for the target, `N` otherwise; a GSSENCRequest answered
//! `N`), then the startup packet or a CancelRequest. Used by the session and by
//! the answer to a connection refused before its session.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{self, Startup};
use super::stream::Stream;

/// What the client asked for once any encryption is settled.
#[derive(Debug)]
pub enum Opening {
    Cancel {
        pid: i32,
        secret: i32,
    },
    Params {
        version: i32,
        params: Vec<(String, String)>,
    },
}

/// Why the opening failed: SQLSTATE and `end` for the connection record, and
/// the client if it can still be told (`None` when the connection is gone or
/// its TLS state is unknown).
pub struct OpeningError {
    pub sqlstate: &'static str,
    pub end: &'static str,
    pub detail: String,
    pub client: Option<Stream>,
}

impl OpeningError {
    fn io(e: impl std::fmt::Display) -> Self {
        Self {
            sqlstate: "08006",
            end: "error",
            detail: e.to_string(),
            client: None,
        }
    }
    fn protocol(detail: impl Into<String>, client: Option<Stream>) -> Self {
        Self {
            sqlstate: "08P01",
            end: "protocol_error",
            detail: detail.into(),
            client,
        }
    }
}

/// Reads the client's opening from `tcp` (bytes already read in `buf`). Every
/// packet is bounded by [`codec::MAX_STARTUP`] before it is buffered; the
/// caller bounds the time. `tls`: the agent's certificate towards clients of
/// this target, if it terminates client TLS for it.
pub async fn read(
    tcp: TcpStream,
    buf: &mut BytesMut,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(Stream, Opening), OpeningError> {
    let mut client = Stream::Plain(tcp);
    loop {
        let pkt = loop {
            match codec::try_startup(buf) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => {
                    return Err(OpeningError::protocol(
                        format!("startup packet: {e}"),
                        Some(client),
                    ));
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            match client.read_buf(buf).await {
                Ok(0) => return Err(OpeningError::io("client closed before its startup")),
                Ok(_) => {}
                Err(e) => return Err(OpeningError::io(e)),
            }
        };
        match pkt {
            Startup::Ssl if !client.is_tls() => {
                let Stream::Plain(mut tcp) = client else {
                    return Err(OpeningError::io("TLS state"));
                };
                match &tls {
                    Some(cfg) => {
                        if let Err(e) = tcp.write_all(b"S").await {
                            return Err(OpeningError::io(e));
                        }
                        if !buf.is_empty() {
                            // Bytes sent before the handshake would be outside TLS.
                            return Err(OpeningError::protocol(
                                "data after SSLRequest before the TLS handshake",
                                None,
                            ));
                        }
                        match tokio_rustls::TlsAcceptor::from(cfg.clone())
                            .accept(tcp)
                            .await
                        {
                            Ok(s) => client = Stream::Server(Box::new(s)),
                            Err(e) => {
                                return Err(OpeningError {
                                    sqlstate: "08006",
                                    end: "tls_error",
                                    detail: format!("TLS handshake with the client: {e}"),
                                    client: None,
                                });
                            }
                        }
                    }
                    None => {
                        if let Err(e) = tcp.write_all(b"N").await {
                            return Err(OpeningError::io(e));
                        }
                        client = Stream::Plain(tcp);
                    }
                }
            }
            Startup::GssEnc if !client.is_tls() => {
                // Not offered: clients fall back to TLS or plain.
                if let Err(e) = client.write_all(b"N").await {
                    return Err(OpeningError::io(e));
                }
            }
            Startup::Ssl | Startup::GssEnc => {
                return Err(OpeningError::protocol(
                    "encryption requested twice",
                    Some(client),
                ));
            }
            Startup::Cancel { pid, secret } => {
                return Ok((client, Opening::Cancel { pid, secret }));
            }
            Startup::Params { version, params } => {
                return Ok((client, Opening::Params { version, params }));
            }
        }
    }
}
