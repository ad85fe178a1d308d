//! The exchange server: answers members on the exchange port, each request kind through the
//! one signed request/answer path (`exchange::serve_node`): member lists, our records, our
//! probe summary, our users' ratings, our node info, and requests to use one of our services.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::catalog::publish::Sharing;
use crate::mesh::invite::Invites;
use crate::mesh::{exchange, Mesh};
use crate::registry::manager::Manager;
use crate::services::UseRequest;

/// At most this many exchange connections served at once; more are dropped.
const MAX_SERVING: usize = 64;
/// At most this many at once from one address (an IPv6 /64 counts as one), so one address,
/// keyless or not, never takes the slots the other members need.
const MAX_PER_ADDRESS: usize = 8;
/// Dropped and refused connections are told in one line per this interval (the first at
/// once), never a line each: a flood must not fill the log.
const TALLY_EVERY: Duration = Duration::from_secs(30);

pub async fn serve(
    mesh: Arc<Mesh>,
    share: Arc<Sharing>,
    manager: Arc<Manager>,
    listener: tokio::net::TcpListener,
) {
    serve_full(mesh, share, manager, Extras::default(), listener).await
}

/// What a node serves beyond its lists and records: its users' ratings (none without a book),
/// its invitations (redeemed for nodes that hold a token and no key), its node info.
#[derive(Clone)]
pub struct Extras {
    pub ratings: Option<Arc<crate::probe::ratings::Book>>,
    pub invites: Option<Arc<Invites>>,
    pub community: Arc<crate::probe::community::Community>,
}

impl Default for Extras {
    fn default() -> Self {
        Extras {
            ratings: None,
            invites: None,
            community: crate::probe::community::Community::new(),
        }
    }
}

/// `serve`, with `extras`.
pub async fn serve_full(
    mesh: Arc<Mesh>,
    share: Arc<Sharing>,
    manager: Arc<Manager>,
    extras: Extras,
    listener: tokio::net::TcpListener,
) {
    accept(listener, move |stream, peer| {
        let ratings = extras.ratings.clone();
        let invites = extras.invites.clone();
        let community = extras.community.clone();
        let mesh = mesh.clone();
        let share = share.clone();
        let manager = manager.clone();
        async move {
            let m = mesh.clone();
            let summary = share.summary.lock().unwrap().clone();
            let m2 = mesh.clone();
            let ours = move || share.ours.lock().unwrap().clone();
            // A member asks to use one of our services: known members only, as they are in
            // our list (their VPN address is ours to know, not theirs to claim); the exchange
            // took the ask only under the node key pinned for `node_id`.
            let ask = move |a: exchange::ServiceAsk| {
                let from = {
                    let ms = m2.members.lock().unwrap();
                    if a.node_id == ms.me {
                        return Err("that is this node".to_string());
                    }
                    ms.members.get(&a.node_id).cloned()
                };
                let from = from.ok_or_else(|| format!("{} is not a member we know", a.node_id))?;
                tracing::info!("{} ({peer}) asks to use our {}", from.name, a.service);
                manager
                    .accept(
                        &a.service,
                        &UseRequest {
                            from,
                            fields: a.fields,
                        },
                    )
                    .map_err(|e| e.to_string())
            };
            let local = exchange::Server {
                key: &mesh.key,
                node: &mesh.node_key,
                members: &mesh.members,
                invites: invites.as_deref().map(|i| (i, peer.ip())),
            };
            exchange::serve_node(
                stream,
                local,
                move |theirs| {
                    let mut ms = m.members.lock().unwrap();
                    let merged = ms.merge(theirs);
                    for r in &merged.refused {
                        tracing::warn!("exchange from {peer}: refused {r}");
                    }
                    if merged.changed {
                        m.changed.notify_one();
                        m.wake.notify_one();
                    }
                    ms.list()
                },
                ours,
                ask,
                move || summary,
                // Made only for the fetch that wants them, not on every connection.
                exchange::Published {
                    ratings: move || ratings.map_or_else(|| "[]".into(), |b| b.ours_json()),
                    info: move || community.ours.lock().unwrap().clone(),
                },
            )
            .await
        }
    })
    .await
}

/// The exchange port's accept loop: each connection to `handle` in a task of its own, at most
/// `MAX_SERVING` at once and `MAX_PER_ADDRESS` from one address; the others are closed at
/// once. What a peer without the key may make a served connection hold is bounded by the
/// protocol (`exchange::MAX_PREAUTH`, `exchange::HANDSHAKE`).
pub async fn accept<F, Fut>(listener: tokio::net::TcpListener, handle: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = Result<usize, exchange::ExchangeError>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SERVING));
    let per_address = Arc::new(Mutex::new(HashMap::new()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tick = tokio::time::interval(TALLY_EVERY / 3);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tick.tick() => {
                tally.lock().unwrap().tell(false);
                continue;
            }
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(held) = Held::take(&per_address, peer.ip()) else {
            tally
                .lock()
                .unwrap()
                .dropped(peer, "too many connections from its address");
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tally.lock().unwrap().dropped(peer, "too many connections");
            continue;
        };
        let served = handle(stream, peer);
        let tally = tally.clone();
        tokio::spawn(async move {
            match served.await {
                Ok(n) => tracing::debug!("exchange: swapped lists with {peer} ({n} members)"),
                Err(e) => tally.lock().unwrap().refused(peer, &e),
            }
            drop((permit, held));
        });
    }
}

/// Connections from one source at once: IPv4 addresses, IPv6 /64 prefixes (one host has a
/// whole /64 to pick from).
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// One connection counted against its source while it lives.
struct Held {
    map: PerAddress,
    source: IpAddr,
}

impl Held {
    fn take(map: &PerAddress, ip: IpAddr) -> Option<Held> {
        let source = source(ip);
        let mut m = map.lock().unwrap();
        let n = m.entry(source).or_insert(0);
        if *n >= MAX_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Held {
            map: map.clone(),
            source,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap();
        if let Some(n) = m.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.source);
            }
        }
    }
}

/// Connections dropped (no slot) and refused (the exchange failed: no key, malformed, too
/// long, too slow) since the last line about them.
#[derive(Default)]
struct Tally {
    dropped: u64,
    refused: u64,
    last: String,
    told: Option<Instant>,
}

impl Tally {
    fn dropped(&mut self, peer: SocketAddr, why: &str) {
        self.dropped += 1;
        self.last = format!("{peer} dropped: {why}");
        self.tell(true);
    }

    fn refused(&mut self, peer: SocketAddr, e: &exchange::ExchangeError) {
        tracing::debug!("exchange: refused {peer}: {e}");
        self.refused += 1;
        self.last = format!("{peer} refused: {e}");
        self.tell(true);
    }

    /// One line when there is something to tell and the last line is `TALLY_EVERY` old (or,
    /// with `first`, there was none yet).
    fn tell(&mut self, first: bool) {
        if self.dropped + self.refused == 0 {
            return;
        }
        match self.told {
            Some(t) if t.elapsed() < TALLY_EVERY => return,
            None if !first => return,
            _ => {}
        }
        tracing::warn!(
            "exchange: {} connections dropped, {} refused{} (last: {}); at most a line per {} s",
            self.dropped,
            self.refused,
            match self.told {
                Some(t) => format!(" in the last {} s", t.elapsed().as_secs()),
                None => String::new(),
            },
            self.last,
            TALLY_EVERY.as_secs()
        );
        self.dropped = 0;
        self.refused = 0;
        self.told = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_holds_at_most_its_share() {
        let map = PerAddress::default();
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let held: Vec<Held> = (0..MAX_PER_ADDRESS)
            .map(|i| Held::take(&map, if i % 2 == 0 { a } else { b }).unwrap())
            .collect();
        assert!(Held::take(&map, a).is_none(), "one /64 is one source");
        assert!(Held::take(&map, "2001:db8:1:3::1".parse().unwrap()).is_some());
        assert!(Held::take(&map, "::ffff:192.0.2.1".parse().unwrap()).is_some());
        drop(held);
        assert!(
            map.lock().unwrap().is_empty(),
            "no entry outlives its connections"
        );
        assert!(Held::take(&map, a).is_some());
    }

    #[test]
    fn drops_are_told_once_per_interval() {
        let mut t = Tally::default();
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        t.dropped(peer, "too many");
        assert_eq!(
            (t.dropped, t.told.is_some()),
            (0, true),
            "the first at once"
        );
        for _ in 0..1000 {
            t.dropped(peer, "too many");
            t.refused(peer, &exchange::ExchangeError::BadMac);
        }
        t.tell(false);
        assert_eq!(
            (t.dropped, t.refused),
            (1000, 1000),
            "the rest wait for the interval"
        );
        if let Some(long_ago) = Instant::now().checked_sub(TALLY_EVERY) {
            t.told = Some(long_ago);
            t.tell(false);
            assert_eq!((t.dropped, t.refused), (0, 0));
        }
    }
}
