//! Dashboard logins: one user (`admin`) whose Argon2 hash the agent hands over at start;
//! sessions are random tokens in an HttpOnly, SameSite=Strict cookie.
//!
//! Password guessing is slowed per client address, and one address cannot crowd out another:
//! - An address's tries are checked one at a time, in the order they came, each after the
//!   address's backoff (doubling from 0.5 s to 30 s per failure in a row). The failure is
//!   counted before the check and the wait is read only once the try before it is finished,
//!   so parallel tries cannot share one backoff step.
//! - At most `MAX_PENDING` tries of an address wait; more are refused at once (429). Waiting
//!   rather than refusing every concurrent try keeps a double submit working.
//! - An admitted try runs to its end in its own task even if its client leaves, so dropping
//!   the connection during a check neither skips the failure nor frees the address's turn.
//! - Argon2 (~19 MiB, 0.1-0.5 s each) runs at most `CHECKS` at a time, through a first-come
//!   first-served gate that each address enters with at most one check: the gate serves
//!   addresses round-robin, and a flood from one address holds at most one of its places.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub const USER: &str = "admin";
pub const COOKIE: &str = "cloudy_session";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 64;
const MAX_CLIENTS: usize = 1024;
/// Failures are forgotten after this long without another.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// Tries one address may have admitted and unanswered: one being checked, the rest waiting.
const MAX_PENDING: u32 = 3;
/// Password checks at a time, all addresses together (memory: ~19 MiB each).
const CHECKS: usize = 2;

/// Why a login gave no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Checked: wrong user or password.
    Wrong,
    /// Not checked: this address has too many tries waiting (or too many addresses do). It
    /// may try again after `retry_after`.
    Busy { retry_after: Duration },
}

/// What is known of one client address.
struct Client {
    /// Failures in a row (a try being checked counts as one until it succeeds).
    fails: u32,
    /// The earliest its next try may be checked.
    next: Instant,
    /// When it last failed, to forget it after `FAILURE_MEMORY`.
    last: Instant,
    /// Tries admitted and not yet finished.
    pending: u32,
    /// Held while one of its tries waits for its backoff and is checked.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// The state the checking tasks share with `Auth`.
struct Checks {
    hash: String,
    clients: Mutex<HashMap<IpAddr, Client>>,
    gate: Arc<Semaphore>,
    #[cfg(test)]
    count: std::sync::atomic::AtomicUsize,
}

pub struct Auth {
    checks: Arc<Checks>,
    sessions: Mutex<HashMap<String, Instant>>,
}

impl Auth {
    pub fn new(hash: String) -> Auth {
        Auth {
            checks: Arc::new(Checks {
                hash: hash.trim().to_string(),
                clients: Mutex::new(HashMap::new()),
                gate: Arc::new(Semaphore::new(CHECKS)),
                #[cfg(test)]
                count: Default::default(),
            }),
            sessions: Mutex::new(HashMap::new()),
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
    pub async fn login(
        &self,
        client: IpAddr,
        user: &str,
        password: &str,
    ) -> Result<String, Refused> {
        // One client whichever family it came in by (the dashboard listens on both).
        let client = client.to_canonical();
        let turn = self.checks.admit(client)?;
        let (checks, user, password) =
            (self.checks.clone(), user.to_string(), password.to_string());
        // Its own task: a try, once admitted, is finished even if the client leaves.
        let ok = tokio::spawn(async move { checks.check(client, turn, &user, &password).await })
            .await
            .unwrap_or(false);
        if !ok {
            return Err(Refused::Wrong);
        }
        let token = crate::os::identity::hex(&crate::os::identity::random_bytes::<32>());
        let mut s = self.sessions.lock().unwrap();
        s.retain(|_, t| t.elapsed() < SESSION_TTL);
        if s.len() >= MAX_SESSIONS {
            if let Some(k) = s.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                s.remove(&k);
            }
        }
        s.insert(token.clone(), Instant::now());
        Ok(token)
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

impl Checks {
    /// Counts a try of `client` in, or refuses it at once; the address's turn if admitted.
    fn admit(&self, client: IpAddr) -> Result<Arc<tokio::sync::Mutex<()>>, Refused> {
        let now = Instant::now();
        let mut c = self.clients.lock().unwrap();
        c.retain(|_, e| e.pending > 0 || now.duration_since(e.last) < FAILURE_MEMORY);
        if c.len() >= MAX_CLIENTS && !c.contains_key(&client) {
            // Full of other clients: forget the idle one that failed longest ago. Clients with
            // tries under way are never forgotten (their turn would be lost): with none idle,
            // refuse.
            let idle = c
                .iter()
                .filter(|(_, e)| e.pending == 0)
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| *k);
            match idle {
                Some(k) => {
                    c.remove(&k);
                }
                None => {
                    tracing::warn!(
                        "dashboard: login from {client} refused: {MAX_CLIENTS} clients trying"
                    );
                    return Err(Refused::Busy {
                        retry_after: Duration::from_secs(1),
                    });
                }
            }
        }
        let e = c.entry(client).or_insert_with(|| Client {
            fails: 0,
            next: now,
            last: now,
            pending: 0,
            turn: Default::default(),
        });
        if e.pending >= MAX_PENDING {
            // Not logged per try: a flood would flood the log.
            tracing::debug!(
                "dashboard: login from {client} refused: {} tries waiting",
                e.pending
            );
            return Err(Refused::Busy {
                retry_after: e
                    .next
                    .saturating_duration_since(now)
                    .max(Duration::from_secs(1)),
            });
        }
        e.pending += 1;
        Ok(e.turn.clone())
    }

    /// Waits for the turn of `client` (admitted by `admit`) and its backoff, then checks the
    /// password and records the outcome.
    async fn check(
        &self,
        client: IpAddr,
        turn: Arc<tokio::sync::Mutex<()>>,
        user: &str,
        password: &str,
    ) -> bool {
        // Held to the end: the next try of this address reads its backoff only after this one
        // has been counted.
        let _turn = turn.lock().await;
        let next = self.clients.lock().unwrap().get(&client).map(|e| e.next);
        if let Some(next) = next {
            tokio::time::sleep_until(next.into()).await;
        }
        let permit = self
            .gate
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        #[cfg(test)]
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (hash, pw) = (self.hash.clone(), password.to_string());
        let good = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            crate::os::identity::verify_password(&hash, &pw)
        })
        .await
        .unwrap_or(false);
        let ok = good && user == USER;
        let now = Instant::now();
        let mut c = self.clients.lock().unwrap();
        if let Some(e) = c.get_mut(&client) {
            e.pending -= 1;
            if ok {
                e.fails = 0;
                e.next = now;
            } else {
                e.fails += 1;
                e.last = now;
                e.next = now + Auth::delay(e.fails);
                tracing::warn!(
                    "dashboard: failed login from {client} ({} in a row)",
                    e.fails
                );
            }
            if e.pending == 0 && e.fails == 0 {
                c.remove(&client);
            }
        }
        ok
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

/// `Secure`: the browser sends it back over HTTPS only, never to the plain-HTTP port.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn fails(a: &Auth, ip: IpAddr) -> Option<u32> {
        a.checks.clients.lock().unwrap().get(&ip).map(|e| e.fails)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn login_sessions_and_slowdown() {
        let a = Auth::new(crate::os::identity::hash_password("right"));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(a.login(ip, USER, "wrong").await, Err(Refused::Wrong));
        assert_eq!(
            a.login(ip, "root", "right").await,
            Err(Refused::Wrong),
            "only admin"
        );
        assert_eq!(fails(&a, ip), Some(2));
        let t0 = Instant::now();
        let tok = a.login(ip, USER, "right").await.unwrap();
        assert!(t0.elapsed() >= Auth::delay(2), "the third try waited");
        assert!(a.valid(&tok));
        assert_eq!(fails(&a, ip), None, "reset on success");
        let hdr = format!("x=1; {COOKIE}={tok}");
        assert_eq!(token(&hdr), Some(tok.as_str()));
        assert_eq!(token("cloudy_session=../../etc"), None);
        a.logout(&tok);
        assert!(!a.valid(&tok));
        assert_eq!(Auth::delay(1), Duration::from_millis(500));
        assert_eq!(Auth::delay(30), MAX_DELAY);
        assert!(set_cookie(&tok).contains("HttpOnly; SameSite=Strict"));
        // The old cookie had no `Secure`: a browser would send it to the plain-HTTP port.
        for c in [set_cookie(&tok), clear_cookie()] {
            assert!(c.split("; ").any(|a| a == "Secure"), "{c}");
        }
    }

    /// Parallel tries of one address: `MAX_PENDING` admitted, the rest refused at once, and
    /// one Argon2 check per backoff step (counted).
    #[tokio::test(flavor = "current_thread")]
    async fn parallel_tries_of_one_address_are_bounded_and_take_turns() {
        let a = Arc::new(Auth::new(crate::os::identity::hash_password("right")));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let tries: Vec<_> = (0..20)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.login(ip, USER, "wrong").await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(a.checks.count.load(Ordering::SeqCst), 1, "one check so far");
        let mut busy = 0;
        for t in tries {
            match t.await.unwrap() {
                Err(Refused::Busy { retry_after }) => {
                    assert!(retry_after >= Duration::from_secs(1));
                    busy += 1;
                }
                Err(Refused::Wrong) => {}
                Ok(_) => panic!("a wrong password let in"),
            }
        }
        assert_eq!(busy, 20 - MAX_PENDING as usize);
        assert_eq!(a.checks.count.load(Ordering::SeqCst), MAX_PENDING as usize);
        assert_eq!(fails(&a, ip), Some(MAX_PENDING));
        // The same address as IPv4-mapped IPv6 is the same client, still in its backoff.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert!(a.login(mapped, USER, "right").await.is_ok());
        assert!(t0.elapsed() >= Auth::delay(MAX_PENDING) - Duration::from_millis(100));
    }

    /// A try whose caller gives up (its connection dropped) is still checked and counted.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_try_still_counts() {
        let a = Auth::new(crate::os::identity::hash_password("right"));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let gone = tokio::time::timeout(Duration::from_millis(1), a.login(ip, USER, "wrong"));
        assert!(gone.await.is_err(), "dropped before its answer");
        let t0 = Instant::now();
        while fails(&a, ip) != Some(1) {
            assert!(t0.elapsed() < Duration::from_secs(5), "never counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(a.checks.clients.lock().unwrap()[&ip].pending, 0);
    }
}
