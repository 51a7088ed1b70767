//! The client side of PostgreSQL password authentication, used by the agent to
//! log in upstream with credentials only it holds: SCRAM-SHA-256 (RFC 5802 /
//! RFC 7677, without channel binding), md5 and cleartext.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// `md5` + md5(md5(password + user) + salt), as the server expects.
pub fn md5_password(user: &str, password: &str, salt: &[u8]) -> String {
    use md5::Md5;
    let hex = crate::audit::hex;
    let inner = hex(&Md5::digest(format!("{password}{user}").as_bytes()));
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

/// One SCRAM-SHA-256 exchange, client side.
pub struct Scram {
    password: String,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
    verified: bool,
}

impl Scram {
    /// Starts an exchange with a fresh random nonce.
    pub fn new(password: &str) -> Result<Self, String> {
        let mut raw = [0u8; 18];
        getrandom::fill(&mut raw).map_err(|e| format!("random nonce: {e}"))?;
        Ok(Self::with_nonce(password, &B64.encode(raw)))
    }

    pub fn with_nonce(password: &str, nonce: &str) -> Self {
        Self {
            password: password.to_string(),
            nonce: nonce.to_string(),
            // PostgreSQL takes the user from the startup packet, not from here.
            client_first_bare: format!("n=,r={nonce}"),
            server_signature: None,
            verified: false,
        }
    }

    /// The SASLInitialResponse data.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Answers the server-first-message with the client-final-message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let sf = std::str::from_utf8(server_first)
            .map_err(|_| "server-first-message is not UTF-8".to_string())?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in sf.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = part.strip_prefix("s=") {
                salt = Some(
                    B64.decode(v)
                        .map_err(|_| "server salt is not base64".to_string())?,
                );
            } else if let Some(v) = part.strip_prefix("i=") {
                iterations = Some(
                    v.parse::<u32>()
                        .map_err(|_| "server iteration count is not a number".to_string())?,
                );
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err("server-first-message lacks r, s or i".into());
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("server nonce does not extend the client nonce".into());
        }
        if !(1..=10_000_000).contains(&iterations) {
            return Err(format!("server asks for {iterations} iterations"));
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2::<HmacSha256>(self.password.as_bytes(), &salt, iterations, &mut salted)
            .map_err(|e| format!("pbkdf2: {e}"))?;
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{sf},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message: the server proves it knew the password too.
    pub fn verify_server_final(&mut self, server_final: &[u8]) -> Result<(), String> {
        let sf = std::str::from_utf8(server_final)
            .map_err(|_| "server-final-message is not UTF-8".to_string())?;
        if let Some(e) = sf.strip_prefix("e=") {
            return Err(format!("server refused the exchange: {e}"));
        }
        let v = sf
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or("server-final-message has no verifier")?;
        let got = B64
            .decode(v)
            .map_err(|_| "server verifier is not base64".to_string())?;
        match self.server_signature {
            Some(want) if got == want => {
                self.verified = true;
                Ok(())
            }
            _ => {
                Err("server signature does not match: the server does not know the password".into())
            }
        }
    }
}

impl Scram {
    /// Whether the server proved it knows the password (server-final verified).
    pub fn verified(&self) -> Result<(), String> {
        if self.verified {
            Ok(())
        } else {
            Err("the server never proved it knows the password".into())
        }
    }
}

/// What a client's SCRAM initial response asks of channel binding, read from
/// its GS2 header (RFC 5802 section 7): `n` (the client does not support it),
/// `y` (it does, but thinks the server does not), `p=<type>` (it binds).
#[derive(Debug, PartialEq, Eq)]
pub enum Gs2Binding {
    NotSupported,
    ClientSupports,
    Binds(String),
}

/// The channel-binding flag of a SASLInitialResponse body (mechanism name,
/// length, client-first-message), or `None` when the body is not one.
pub fn gs2_binding(body: &[u8]) -> Option<Gs2Binding> {
    let mut r = super::codec::Reader::new(body);
    r.cstr("SASLInitialResponse").ok()?;
    let len = usize::try_from(r.i32("SASLInitialResponse").ok()?).ok()?;
    let data = r.bytes(len, "SASLInitialResponse").ok()?;
    let flag = data.split(|&b| b == b',').next()?;
    match flag {
        b"n" => Some(Gs2Binding::NotSupported),
        b"y" => Some(Gs2Binding::ClientSupports),
        [b'p', b'=', kind @ ..] => Some(Gs2Binding::Binds(
            String::from_utf8_lossy(kind).into_owned(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initial(mech: &str, data: &[u8]) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        super::super::codec::sasl_initial(&mut out, mech, data);
        // Tag and length off: the body only.
        out[5..].to_vec()
    }

    #[test]
    fn gs2_flags_are_read_from_the_initial_response() {
        let n = initial(SCRAM_SHA_256, b"n,,n=,r=abc");
        assert_eq!(gs2_binding(&n), Some(Gs2Binding::NotSupported));
        let y = initial(SCRAM_SHA_256, b"y,,n=,r=abc");
        assert_eq!(gs2_binding(&y), Some(Gs2Binding::ClientSupports));
        let p = initial("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc");
        assert_eq!(
            gs2_binding(&p),
            Some(Gs2Binding::Binds("tls-server-end-point".into()))
        );
        assert_eq!(gs2_binding(&initial(SCRAM_SHA_256, b"x,,n=")), None);
        assert_eq!(gs2_binding(b"SCRAM-SHA-256\0\0\0"), None);
        assert_eq!(gs2_binding(b""), None);
    }

    #[test]
    fn md5_matches_the_server_formula() {
        // md5(md5("secret" + "app") + salt) computed independently.
        let inner = format!("{:x}", md5::Md5::digest(b"secretapp"));
        let mut h = md5::Md5::new();
        h.update(inner.as_bytes());
        h.update([1, 2, 3, 4]);
        let want = format!("md5{:x}", h.finalize());
        assert_eq!(md5_password("app", "secret", &[1, 2, 3, 4]), want);
    }

    /// RFC 7677 section 3 test vector (user "user", password "pencil").
    #[test]
    fn scram_rfc7677_vector() {
        let mut s = Scram::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO");
        // The RFC's client-first-bare names the user; ours leaves it empty, as
        // PostgreSQL does, so rebuild the exchange with the RFC's bare message.
        s.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = s.client_final(server_first).expect("final");
        assert_eq!(
            String::from_utf8(fin).expect("utf8"),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        s.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .expect("server verified");
        assert!(s.verify_server_final(b"v=AAAA").is_err());
        assert!(s.verify_server_final(b"e=invalid-proof").is_err());
    }

    #[test]
    fn scram_refuses_a_server_nonce_that_does_not_extend_ours() {
        let mut s = Scram::with_nonce("p", "abc");
        assert!(s.client_final(b"r=xyz123,s=AAAA,i=4096").is_err());
        assert!(s.client_final(b"r=abc,s=AAAA,i=4096").is_err());
        assert!(s.client_final(b"r=abcd,s=AAAA").is_err());
    }
}
