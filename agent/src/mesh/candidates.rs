//! Exchange services heard of (on the LAN by mDNS, or through Serf) that are not members yet:
//! the addresses gossip dials to swap member lists. The mDNS tag is public, so anyone on the
//! LAN can announce as many "exchange services" as it likes; this set keeps what that costs
//! bounded. It holds at most `MAX_CANDIDATES` addresses and `MAX_PER_ADDRESS` ports of one IP
//! address; a round dials at most `DIALS_PER_ROUND` of them; one that does not answer is tried
//! again after a growing pause (each dial ends within `DIAL_TIMEOUT`) and dropped after `MAX_FAILURES` tries (a full set makes room
//! for a newcomer by dropping the entry that failed most); one nobody mentions for `UNSEEN`
//! is dropped too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// More exchange services than a LAN shows at once before they answer and become members.
pub const MAX_CANDIDATES: usize = 32;
/// Ports one IP address may hold in the set (a host runs one agent; a few spare).
pub const MAX_PER_ADDRESS: usize = 4;
/// Dials one gossip round makes to candidates, at once.
pub const DIALS_PER_ROUND: usize = 16;
/// How long one dial to a candidate may take, the exchange included: an exchange service on
/// the LAN answers in milliseconds.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Unanswered tries before a candidate is dropped.
pub const MAX_FAILURES: u32 = 3;
/// The pause after the first failure; doubled after each further one.
pub const BACKOFF: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A candidate that no source mentioned again for this long is dropped.
pub const UNSEEN: Duration = Duration::from_secs(600);
/// While a dial is out, the candidate is not handed out again.
const IN_FLIGHT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Entry {
    last_seen: Instant,
    failures: u32,
    next_try: Instant,
}

/// What `offer` did with an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// New in the set.
    Added,
    /// Already there: only its last sighting is updated (not its failures).
    Seen,
    /// Its IP address holds `MAX_PER_ADDRESS` entries already.
    TooManyFromAddress,
    /// The set is full of candidates not yet tried.
    Full,
}

#[derive(Debug, Default)]
pub struct Candidates {
    entries: HashMap<SocketAddr, Entry>,
}

impl Candidates {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.entries.contains_key(addr)
    }

    /// A source mentions `addr`.
    pub fn offer(&mut self, addr: SocketAddr, now: Instant) -> Offered {
        if let Some(e) = self.entries.get_mut(&addr) {
            e.last_seen = now;
            return Offered::Seen;
        }
        let same_ip = self.entries.keys().filter(|a| a.ip() == addr.ip()).count();
        if same_ip >= MAX_PER_ADDRESS {
            return Offered::TooManyFromAddress;
        }
        if self.entries.len() >= MAX_CANDIDATES {
            // Make room by dropping the one that failed most (the longest unseen of those);
            // never one not yet tried, so a burst cannot push out what came before it.
            let worst = self
                .entries
                .iter()
                .filter(|(_, e)| e.failures > 0)
                .max_by_key(|(_, e)| (e.failures, std::cmp::Reverse(e.last_seen)))
                .map(|(a, _)| *a);
            match worst {
                Some(w) => {
                    self.entries.remove(&w);
                }
                None => return Offered::Full,
            }
        }
        self.entries.insert(
            addr,
            Entry {
                last_seen: now,
                failures: 0,
                next_try: now,
            },
        );
        Offered::Added
    }

    /// Up to `max` candidates to dial now, the least failed first; each is then not due again
    /// until `answered` or `failed` says how the dial went.
    pub fn due(&mut self, now: Instant, max: usize) -> Vec<SocketAddr> {
        self.expire(now);
        let mut due: Vec<(u32, Instant, SocketAddr)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.next_try <= now)
            .map(|(a, e)| (e.failures, e.next_try, *a))
            .collect();
        due.sort();
        due.truncate(max);
        due.into_iter()
            .map(|(_, _, a)| {
                if let Some(e) = self.entries.get_mut(&a) {
                    e.next_try = now + IN_FLIGHT;
                }
                a
            })
            .collect()
    }

    /// The exchange with `addr` worked: it is a member now, not a candidate.
    pub fn answered(&mut self, addr: &SocketAddr) {
        self.entries.remove(addr);
    }

    /// The exchange with `addr` failed: try again later, or drop it after `MAX_FAILURES`.
    pub fn failed(&mut self, addr: &SocketAddr, now: Instant) {
        let Some(e) = self.entries.get_mut(addr) else {
            return;
        };
        e.failures += 1;
        if e.failures >= MAX_FAILURES {
            self.entries.remove(addr);
            return;
        }
        let pause = BACKOFF
            .saturating_mul(1 << (e.failures - 1).min(16))
            .min(BACKOFF_MAX);
        e.next_try = now + pause;
    }

    /// Drops what no source has mentioned for `UNSEEN`.
    pub fn expire(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < UNSEEN);
    }

    /// When the next candidate falls due (None with none waiting).
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.next_try).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32, port: u16) -> SocketAddr {
        SocketAddr::new(std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), port)
    }

    #[test]
    fn a_flood_is_bounded_per_address_and_in_all() {
        let now = Instant::now();
        let mut c = Candidates::default();
        // One host announcing 400 ports gets MAX_PER_ADDRESS of them in.
        let added = (0..400)
            .filter(|&p| c.offer(addr(1, 1000 + p), now) == Offered::Added)
            .count();
        assert_eq!(added, MAX_PER_ADDRESS);
        assert_eq!(c.offer(addr(1, 5000), now), Offered::TooManyFromAddress);
        // 400 addresses: the set stops at MAX_CANDIDATES.
        for i in 0..400 {
            c.offer(addr(100 + i, 6655), now);
        }
        assert_eq!(c.len(), MAX_CANDIDATES);
        assert_eq!(c.offer(addr(999, 6655), now), Offered::Full);
        assert_eq!(c.offer(addr(100, 6655), now), Offered::Seen);
        // A round dials a bounded number, and not the same ones again while they are out.
        let first = c.due(now, DIALS_PER_ROUND);
        assert_eq!(first.len(), DIALS_PER_ROUND);
        let second = c.due(now, DIALS_PER_ROUND);
        assert!(second.iter().all(|a| !first.contains(a)));
    }

    #[test]
    fn unanswered_candidates_back_off_and_age_out() {
        let t0 = Instant::now();
        let mut c = Candidates::default();
        let a = addr(1, 6655);
        c.offer(a, t0);
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..MAX_FAILURES {
            assert_eq!(c.due(now, 8), vec![a]);
            c.failed(&a, now);
            if let Some(next) = c.next_due() {
                // Being announced again does not wipe its record of failures.
                assert_eq!(c.offer(a, now), Offered::Seen);
                assert!(c.due(now, 8).is_empty(), "backs off");
                pauses.push(next - now);
                now = next;
            }
        }
        assert_eq!(pauses, vec![BACKOFF, BACKOFF * 2], "the pause doubles");
        assert!(c.is_empty(), "dropped after {MAX_FAILURES} failures");

        // Not mentioned again for UNSEEN: gone, tried or not.
        let b = addr(2, 6655);
        c.offer(b, t0);
        c.expire(t0 + UNSEEN - Duration::from_secs(1));
        assert!(c.contains(&b));
        c.expire(t0 + UNSEEN);
        assert!(!c.contains(&b));
        // An answer makes it a member: no longer a candidate.
        c.offer(b, t0);
        c.answered(&b);
        assert!(c.is_empty());
    }

    #[test]
    fn a_newcomer_takes_the_place_of_the_most_failed() {
        let now = Instant::now();
        let mut c = Candidates::default();
        for i in 0..MAX_CANDIDATES as u32 {
            c.offer(addr(100 + i, 6655), now);
        }
        let tried = c.due(now, 2);
        c.failed(&tried[0], now);
        c.failed(&tried[1], now);
        let later = now + BACKOFF;
        c.failed(&tried[0], later);
        let member = addr(1, 6655);
        assert_eq!(c.offer(member, later), Offered::Added);
        assert!(!c.contains(&tried[0]), "the most failed made room");
        assert!(c.contains(&tried[1]));
        let due = c.due(later, MAX_CANDIDATES);
        assert_eq!(due.last(), Some(&tried[1]), "untried ones go first");
        assert!(due.contains(&member));
    }
}
