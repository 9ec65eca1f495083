//! Console sign-in: the admin token is exchanged once, at the login page, for a session whose
//! random id lives only in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the hub is
//! served over TLS) and, hashed, in memory. Every action carries the session's CSRF token in a
//! form field, checked in constant time. No token ever appears in a URL or a page other than
//! the session's own CSRF token. Sessions expire after [`SESSION_TTL_SECS`] and die at log out
//! or a hub restart. Sign-in attempts are limited per client address ([`SignInLimiter`]).

use crate::tokens;
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;

/// How long a session lasts after sign-in.
pub(super) const SESSION_TTL_SECS: i64 = 12 * 3600;
/// The session cookie's name.
pub(super) const COOKIE: &str = "flotilla_session";
/// Sessions kept at most; signing in beyond it drops the oldest.
const MAX_SESSIONS: usize = 1000;

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Session {
    /// Sent back in every action's form.
    pub csrf: String,
    pub expires_at: i64,
}

/// The live sessions, keyed by the SHA-256 of their cookie value.
#[derive(Default)]
pub(super) struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_hash
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a session; returns its cookie value.
    pub(super) fn start(&self, now: i64) -> String {
        let id = tokens::new_token();
        let session = Session {
            csrf: tokens::new_token(),
            expires_at: now + SESSION_TTL_SECS,
        };
        let mut sessions = self.lock();
        sessions.retain(|_, session| session.expires_at > now);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, session)| session.expires_at)
                .map(|(hash, _)| hash.clone());
            if let Some(hash) = oldest {
                sessions.remove(&hash);
            }
        }
        sessions.insert(tokens::hash(&id), session);
        id
    }

    /// The unexpired session the request's cookie names.
    pub(super) fn find(&self, headers: &HeaderMap, now: i64) -> Option<Session> {
        let id = cookie(headers)?;
        let hash = tokens::hash(&id);
        let mut sessions = self.lock();
        match sessions.get(&hash) {
            Some(session) if session.expires_at > now => Some(session.clone()),
            Some(_) => {
                sessions.remove(&hash);
                None
            }
            None => None,
        }
    }

    /// Ends the session the request's cookie names.
    pub(super) fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            self.lock().remove(&tokens::hash(&id));
        }
    }
}

/// The session cookie's value in the request, if any.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value that stores `id` (or, with `None`, deletes the cookie).
pub(super) fn set_cookie(id: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={SESSION_TTL_SECS}{secure}"
        ),
        None => format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// Whether a submitted CSRF token is the session's.
pub(super) fn csrf_ok(session: &Session, submitted: &str) -> bool {
    !submitted.is_empty() && tokens::constant_time_eq(&session.csrf, submitted)
}

/// Sign-in attempts each client address may make: [`SIGN_INS_PER_MINUTE`] a minute, all of them
/// at once at most. Guessing the admin token is hopeless anyway (256 bits); this keeps a client
/// from spending the hub's time on it. GCRA per address (`governor`); addresses not seen for a
/// minute are forgotten every [`FORGET_EVERY`] attempts, so the table stays small.
pub(super) struct SignInLimiter {
    limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    attempts: std::sync::atomic::AtomicU64,
}

/// Sign-in attempts per client address and minute.
pub const SIGN_INS_PER_MINUTE: u32 = 10;
const FORGET_EVERY: u64 = 256;

impl Default for SignInLimiter {
    fn default() -> Self {
        let per_minute = NonZeroU32::new(SIGN_INS_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        SignInLimiter {
            limiter: governor::RateLimiter::hashmap(governor::Quota::per_minute(per_minute)),
            attempts: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl SignInLimiter {
    /// Whether `client` may try to sign in now (the attempt is counted).
    pub(super) fn allow(&self, client: std::net::IpAddr) -> bool {
        let seen = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if seen % FORGET_EVERY == FORGET_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&client).is_ok()
    }
}

/// The address a request comes from: the peer's, or, when a proxy the hub trusts is in front
/// (`--plain-http-behind-proxy`), the last address in `X-Forwarded-For` (the one that proxy
/// appended; earlier ones are the client's to write).
pub(super) fn client_address(
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    trust_forwarded_for: bool,
) -> Option<std::net::IpAddr> {
    if trust_forwarded_for {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .next_back()
            .and_then(|last| last.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer.map(|address| address.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", cookie.parse().unwrap());
        headers
    }

    #[test]
    fn sessions_are_found_by_cookie_until_they_expire_or_end() {
        let sessions = Sessions::default();
        let id = sessions.start(1000);
        let request = headers(&format!("other=1; {COOKIE}={id}"));
        let session = sessions.find(&request, 1001).expect("live session");
        assert!(csrf_ok(&session, &session.csrf));
        assert!(!csrf_ok(&session, ""));
        assert!(!csrf_ok(&session, "guess"));
        assert!(sessions
            .find(&headers(&format!("{COOKIE}=nope")), 1001)
            .is_none());
        assert!(sessions.find(&request, 1000 + SESSION_TTL_SECS).is_none());
        let id = sessions.start(2000);
        let request = headers(&format!("{COOKIE}={id}"));
        sessions.end(&request);
        assert!(sessions.find(&request, 2001).is_none());
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_tls() {
        let cookie = set_cookie(Some("abc"), true);
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/console"] {
            assert!(cookie.contains(part), "{cookie}");
        }
        assert!(!set_cookie(Some("abc"), false).contains("Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
    }

    #[test]
    fn the_client_address_is_the_peer_unless_a_trusted_proxy_names_it() {
        let peer: Option<std::net::SocketAddr> = Some("10.0.0.9:5000".parse().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
        let address = |peer, headers: &HeaderMap, trust| {
            client_address(peer, headers, trust).map(|ip| ip.to_string())
        };
        // (peer, headers, trust the proxy) -> the address limits key on
        let cases = [
            (peer, &headers, false, Some("10.0.0.9")),
            // The proxy appended the last entry; the first is the client's to forge.
            (peer, &headers, true, Some("203.0.113.7")),
            (peer, &HeaderMap::new(), true, Some("10.0.0.9")),
            (None, &HeaderMap::new(), false, None),
        ];
        for (peer, headers, trust, expected) in cases {
            assert_eq!(address(peer, headers, trust).as_deref(), expected);
        }
    }
}
