//! Cancel requests. Each client gets backend key data made up by the agent; a
//! CancelRequest carrying those keys (on a new connection, as the protocol has
//! it) is forwarded to the server with the server's own keys.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub pid: i32,
    pub secret: i32,
    pub session_id: String,
    pub target: String,
}

#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<(i32, i32), Upstream>>,
}

impl Registry {
    /// Registers a session's upstream keys and returns the keys the client gets.
    pub fn register(&self, up: Upstream) -> (i32, i32) {
        let Ok(mut m) = self.map.lock() else {
            return (0, 0);
        };
        loop {
            let mut raw = [0u8; 8];
            if getrandom::fill(&mut raw).is_err() {
                return (0, 0);
            }
            let pid = i32::from_be_bytes([raw[0] & 0x7f, raw[1], raw[2], raw[3]]).max(1);
            let secret = i32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
            if let std::collections::hash_map::Entry::Vacant(e) = m.entry((pid, secret)) {
                e.insert(up);
                return (pid, secret);
            }
        }
    }

    pub fn lookup(&self, pid: i32, secret: i32) -> Option<Upstream> {
        self.map.lock().ok()?.get(&(pid, secret)).cloned()
    }

    pub fn remove(&self, pid: i32, secret: i32) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&(pid, secret));
        }
    }
}
