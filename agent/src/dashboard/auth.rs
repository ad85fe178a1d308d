//! Dashboard logins: one user (`admin`) whose Argon2 hash the agent hands over at start;
//! sessions are random tokens in an HttpOnly, SameSite=Strict cookie; a client that fails
//! waits longer each time (doubling from 0.5 s to 30 s), and one password is checked at a
//! time (Argon2 takes ~19 MiB each).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const USER: &str = "admin";
pub const COOKIE: &str = "cloudy_session";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 64;
const MAX_CLIENTS: usize = 1024;
/// Failures are forgotten after this long without another.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
const MAX_DELAY: Duration = Duration::from_secs(30);

pub struct Auth {
    hash: String,
    sessions: Mutex<HashMap<String, Instant>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    gate: tokio::sync::Semaphore,
}

impl Auth {
    pub fn new(hash: String) -> Auth {
        Auth {
            hash: hash.trim().to_string(),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            gate: tokio::sync::Semaphore::new(1),
        }
    }

    /// How long a client with `fails` recent failures waits before its next try is checked.
    pub fn delay(fails: u32) -> Duration {
        if fails == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(500)
            .saturating_mul(1 << (fails - 1).min(10))
            .min(MAX_DELAY)
    }

    /// Checks a login; a new session token on success.
    pub async fn login(&self, client: IpAddr, user: &str, password: &str) -> Option<String> {
        let fails = {
            let mut f = self.failures.lock().unwrap();
            f.retain(|_, (_, t)| t.elapsed() < FAILURE_MEMORY);
            f.get(&client).map_or(0, |(n, _)| *n)
        };
        tokio::time::sleep(Self::delay(fails)).await;
        let ok = {
            let _one = self.gate.acquire().await.expect("never closed");
            let (hash, pw) = (self.hash.clone(), password.to_string());
            let good = tokio::task::spawn_blocking(move || {
                crate::os::identity::verify_password(&hash, &pw)
            })
            .await
            .unwrap_or(false);
            good && user == USER
        };
        if !ok {
            let mut f = self.failures.lock().unwrap();
            if f.len() >= MAX_CLIENTS && !f.contains_key(&client) {
                // Full of other clients' failures: forget the oldest, keep counting this one.
                if let Some(k) = f.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                    f.remove(&k);
                }
            }
            let e = f.entry(client).or_insert((0, Instant::now()));
            e.0 += 1;
            e.1 = Instant::now();
            tracing::warn!("dashboard: failed login from {client} ({} in a row)", e.0);
            return None;
        }
        self.failures.lock().unwrap().remove(&client);
        let token = crate::os::identity::hex(&crate::os::identity::random_bytes::<32>());
        let mut s = self.sessions.lock().unwrap();
        s.retain(|_, t| t.elapsed() < SESSION_TTL);
        if s.len() >= MAX_SESSIONS {
            if let Some(k) = s.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                s.remove(&k);
            }
        }
        s.insert(token.clone(), Instant::now());
        Some(token)
    }

    pub fn valid(&self, token: &str) -> bool {
        self.sessions
            .lock()
            .unwrap()
            .get(token)
            .is_some_and(|t| t.elapsed() < SESSION_TTL)
    }

    pub fn logout(&self, token: &str) {
        self.sessions.lock().unwrap().remove(token);
    }
}

/// The session token in a Cookie header, if any.
pub fn token(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn login_sessions_and_slowdown() {
        let a = Auth::new(crate::os::identity::hash_password("right"));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(a.login(ip, USER, "wrong").await.is_none());
        assert!(a.login(ip, "root", "right").await.is_none(), "only admin");
        assert_eq!(a.failures.lock().unwrap()[&ip].0, 2);
        let t0 = Instant::now();
        let tok = a.login(ip, USER, "right").await.unwrap();
        assert!(t0.elapsed() >= Auth::delay(2), "the third try waited");
        assert!(a.valid(&tok));
        assert!(
            !a.failures.lock().unwrap().contains_key(&ip),
            "reset on success"
        );
        let hdr = format!("x=1; {COOKIE}={tok}");
        assert_eq!(token(&hdr), Some(tok.as_str()));
        assert_eq!(token("cloudy_session=../../etc"), None);
        a.logout(&tok);
        assert!(!a.valid(&tok));
        assert_eq!(Auth::delay(1), Duration::from_millis(500));
        assert_eq!(Auth::delay(30), MAX_DELAY);
        assert!(set_cookie(&tok).contains("HttpOnly; SameSite=Strict"));
    }
}
