//! Cancel requests. The client is told the server's real process id (so that
//! `pg_backend_pid()`, `pg_stat_activity`, `pg_terminate_backend` and the pid in
//! a NotificationResponse agree with BackendKeyData) and a secret key drawn by
//! the agent; the server's own secret never leaves the agent. A CancelRequest
//! carrying (server pid, agent secret), on a new connection as the protocol has
//! it, is forwarded to that session's server with the server's own secret.
//!
//! Keys are held by (pid, agent secret): two servers behind the agent may hand
//! out the same pid, and a fresh secret is drawn whenever the pair is taken.
//! Guessing a key is as hard as against the server itself (a 32-bit secret for
//! a known pid), and a wrong guess teaches nothing about the server's secret.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::Mutex;

/// The session a client's cancel keys stand for.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// The server's process id (the client is told the same one).
    pub pid: i32,
    /// The server's own secret key, sent only to the server.
    pub secret: i32,
    pub session_id: String,
    pub target: String,
}

/// The keys a client was given: the server's pid and the agent's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKeys {
    pub pid: i32,
    pub secret: i32,
}

#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<(i32, i32), Upstream>>,
}

/// Draws are retried on a clash; this bounds the retries (a clash needs the
/// same pid and the same 32-bit secret, so a second draw practically always
/// succeeds).
const MAX_DRAWS: usize = 64;

impl Registry {
    /// Registers a session's upstream keys and returns the keys the client
    /// gets: the server's pid and a secret of the agent's. `None` if no
    /// random secret could be drawn (the client then gets keys no cancel
    /// request can use).
    pub fn register(&self, up: Upstream) -> Option<ClientKeys> {
        self.register_with(up, &mut |b| getrandom::fill(b).is_ok())
    }

    fn register_with(
        &self,
        up: Upstream,
        draw: &mut dyn FnMut(&mut [u8; 4]) -> bool,
    ) -> Option<ClientKeys> {
        let mut m = self.map.lock().ok()?;
        for _ in 0..MAX_DRAWS {
            let mut raw = [0u8; 4];
            if !draw(&mut raw) {
                return None;
            }
            let secret = i32::from_be_bytes(raw);
            // Never hand the server's own secret back to the client, even by chance.
            if secret == up.secret {
                continue;
            }
            if let Entry::Vacant(e) = m.entry((up.pid, secret)) {
                let pid = up.pid;
                e.insert(up);
                return Some(ClientKeys { pid, secret });
            }
        }
        None
    }

    /// The session behind keys a client presented, if any.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<Upstream> {
        self.map.lock().ok()?.get(&(pid, secret)).cloned()
    }

    pub fn remove(&self, keys: ClientKeys) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&(keys.pid, keys.secret));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(port: u16, pid: i32, secret: i32) -> Upstream {
        Upstream {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid,
            secret,
            session_id: format!("s{port}"),
            target: format!("t{port}"),
        }
    }

    #[test]
    fn the_client_gets_the_servers_pid_and_never_the_servers_secret() {
        let r = Registry::default();
        for i in 0..1000 {
            let k = r.register(up(5432, 4242, i)).expect("keys");
            assert_eq!(k.pid, 4242);
            assert_ne!(k.secret, i, "the server's secret was handed out");
            let u = r.lookup(k.pid, k.secret).expect("registered");
            assert_eq!(u.secret, i, "the server's own secret is what is forwarded");
        }
        assert_eq!(r.len(), 1000, "one entry per session, clashes retried");
    }

    #[test]
    fn the_same_pid_from_two_servers_draws_another_secret() {
        let r = Registry::default();
        // A draw that returns the same secret twice, then another.
        let mut seq = [7i32, 7, 9].into_iter();
        let mut draw = |b: &mut [u8; 4]| match seq.next() {
            Some(v) => {
                *b = v.to_be_bytes();
                true
            }
            None => false,
        };
        let a = r.register_with(up(1, 100, 1), &mut draw).expect("first");
        let b = r.register_with(up(2, 100, 2), &mut draw).expect("second");
        assert_eq!((a.pid, a.secret), (100, 7));
        assert_eq!((b.pid, b.secret), (100, 9), "the clash was retried");
        assert_eq!(r.lookup(100, 7).map(|u| u.addr.port()), Some(1));
        assert_eq!(r.lookup(100, 9).map(|u| u.addr.port()), Some(2));
        r.remove(a);
        assert!(r.lookup(100, 7).is_none());
        assert!(r.lookup(100, 9).is_some());
    }

    #[test]
    fn a_draw_equal_to_the_servers_secret_is_not_used() {
        let r = Registry::default();
        let mut seq = [5i32, 6].into_iter();
        let mut draw = |b: &mut [u8; 4]| match seq.next() {
            Some(v) => {
                *b = v.to_be_bytes();
                true
            }
            None => false,
        };
        let k = r.register_with(up(1, 100, 5), &mut draw).expect("keys");
        assert_eq!(k.secret, 6);
    }

    #[test]
    fn unknown_keys_find_nothing_and_no_randomness_gives_no_keys() {
        let r = Registry::default();
        assert!(r.lookup(1, 2).is_none());
        assert!(r.register_with(up(1, 1, 1), &mut |_| false).is_none());
        assert_eq!(r.len(), 0);
    }
}
