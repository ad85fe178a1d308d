//! The community at a glance: our node info (what we tell members about ourselves: system
//! figures, services, the latency and probe score we measured to each member, the seed's
//! location and contact) and the infos members told us, fetched over the exchange port
//! (request kind `info`). The dashboard's Community map draws both.
//!
//! Latency is the TCP connect time of the info fetch itself, to the member's exchange port: the
//! cheapest real measure, on a connection made anyway, so measuring adds no traffic.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::mesh::exchange::{self, CommunityKey};
use crate::mesh::members::{Member, Members};
use crate::os::system::System;
use crate::probe::Scores;
use cloudy_model::info::{NodeInfo, PeerInfo, ServiceInfo, MAX_INFO_PEERS};

/// How often members are asked for their info: every 5 s in a small community, stretched by
/// 200 ms a member up to 20 s, so that every member's exchange port (64 connections at once,
/// shared with member-list swaps) serves a few infos a second, not a burst of a hundred.
pub const POLL: Duration = Duration::from_secs(5);
const POLL_MAX: Duration = Duration::from_secs(20);
const POLL_PER_MEMBER: Duration = Duration::from_millis(200);
/// Fetches at once (a 1000-member community is asked in rounds of this many).
const AT_ONCE: usize = 8;
/// A member that answered within this is healthy on the map; older answers are stale.
pub const FRESH_S: u64 = 30;

/// A member's info as we last fetched it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    pub info: NodeInfo,
    /// Our latency to it (the connect time of the last fetch that worked), microseconds.
    pub rtt_us: Option<u32>,
    /// When its info last came, unix seconds.
    pub ok_at: u64,
    /// Why the last fetch failed, if it did.
    pub error: Option<String>,
}

/// One point of a member's 24-hour trail: did its info come, and our probe score of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Unix seconds.
    pub t: u64,
    pub reached: bool,
    pub score: Option<u8>,
}

/// A trail point per this interval, a day of them at most per member: the probe's own history
/// keeps reachability per provider only, no scores, so the map keeps this bounded ring.
pub const TRAIL_EVERY_S: u64 = 300;
pub const TRAIL_LEN: usize = (24 * 3600 / TRAIL_EVERY_S) as usize;

/// What the dashboard draws: us and every member we heard from (`GET /api/community`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommunityView {
    /// Our id.
    pub me: String,
    /// When this view was made, unix seconds.
    pub at: u64,
    /// Everyone, us included, by id.
    pub nodes: Vec<Seen>,
    /// The trail of the one node asked for (empty otherwise), oldest first.
    #[serde(default)]
    pub trail: Vec<Sample>,
}

/// Our info and the members' infos.
#[derive(Default)]
pub struct Community {
    /// Our info as JSON, served on the exchange port.
    pub ours: Mutex<String>,
    mine: Mutex<NodeInfo>,
    seen: Mutex<BTreeMap<String, Seen>>,
    trails: Mutex<BTreeMap<String, std::collections::VecDeque<Sample>>>,
}

/// What the seed says of the node for members to see.
#[derive(Debug, Clone, Default)]
pub struct Described {
    pub location: Option<String>,
    pub contact: Option<String>,
}

pub fn now_s() -> u64 {
    crate::mesh::members::now_secs()
}

impl Community {
    pub fn new() -> Arc<Community> {
        Arc::new(Community {
            ours: Mutex::new("{}".into()),
            ..Default::default()
        })
    }

    /// Ours and theirs, members no longer in the list left out.
    pub fn view(&self, members: &Members) -> CommunityView {
        let me = self.mine.lock().unwrap().clone();
        let mut nodes = vec![Seen {
            rtt_us: Some(0),
            ok_at: me.at,
            error: None,
            info: me,
        }];
        let seen = self.seen.lock().unwrap();
        nodes.extend(
            seen.values()
                .filter(|s| members.members.contains_key(&s.info.id) && s.info.id != members.me)
                .cloned(),
        );
        CommunityView {
            me: members.me.clone(),
            at: now_s(),
            nodes,
            trail: Vec::new(),
        }
    }

    /// `view`, with the trail of node `id`.
    pub fn view_of(&self, members: &Members, id: &str) -> CommunityView {
        let mut v = self.view(members);
        v.trail = self
            .trails
            .lock()
            .unwrap()
            .get(id)
            .map(|t| t.iter().copied().collect())
            .unwrap_or_default();
        v
    }

    /// Adds a trail point per member (at most one per `TRAIL_EVERY_S`), `TRAIL_LEN` kept.
    pub fn sample(&self, now: u64, scores: &BTreeMap<String, u8>) {
        let seen = self.seen.lock().unwrap();
        let mut trails = self.trails.lock().unwrap();
        trails.retain(|id, _| seen.contains_key(id));
        for (id, s) in seen.iter() {
            let t = trails.entry(id.clone()).or_default();
            if t.back().is_some_and(|l| now < l.t + TRAIL_EVERY_S) {
                continue;
            }
            t.push_back(Sample {
                t: now,
                reached: s.error.is_none() && now.saturating_sub(s.ok_at) <= FRESH_S,
                score: scores.get(id).copied(),
            });
            while t.len() > TRAIL_LEN {
                t.pop_front();
            }
        }
    }

    /// Sets our info (and its served JSON).
    pub fn set_mine(&self, info: NodeInfo) {
        *self.ours.lock().unwrap() = info.to_json();
        *self.mine.lock().unwrap() = info;
    }

    /// Our latency to each member, from the last fetches.
    fn rtts(&self) -> BTreeMap<String, u32> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(id, s)| s.error.is_none().then_some((id.clone(), s.rtt_us?)))
            .collect()
    }

    /// Asks every member (but us) for its info, `AT_ONCE` at a time.
    pub async fn poll(&self, key: &CommunityKey, members: &Mutex<Members>) {
        let targets: Vec<Member> = {
            let ms = members.lock().unwrap();
            ms.others()
                .filter(|m| !m.address.is_unspecified())
                .cloned()
                .collect()
        };
        for chunk in targets.chunks(AT_ONCE) {
            let got = futures_util::future::join_all(chunk.iter().map(|m| async move {
                let addr = SocketAddr::new(m.address, m.exchange_port);
                (m.id.clone(), exchange::fetch_info(addr, key, m).await)
            }))
            .await;
            let mut seen = self.seen.lock().unwrap();
            for (id, r) in got {
                match r {
                    Ok((info, rtt)) => {
                        seen.insert(
                            id,
                            Seen {
                                info,
                                rtt_us: Some(rtt.as_micros().min(u32::MAX as u128) as u32),
                                ok_at: now_s(),
                                error: None,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::debug!("info of {id}: {e}");
                        if let Some(s) = seen.get_mut(&id) {
                            s.error = Some(e.to_string());
                        }
                    }
                }
            }
        }
        let ms = members.lock().unwrap();
        self.seen
            .lock()
            .unwrap()
            .retain(|id, _| ms.members.contains_key(id));
    }
}

/// Our info now: `services` from the caller (who knows what runs), the rest measured here.
pub fn gather(
    sys: &System,
    members: &Members,
    scores: &Scores,
    rtts: &BTreeMap<String, u32>,
    services: Vec<ServiceInfo>,
    described: &Described,
) -> NodeInfo {
    let me = members.me();
    // Our score of a member: the mean of our probe scores of its services.
    let mut per_node: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for p in &scores.probes {
        let e = per_node.entry(p.record.node_id.as_str()).or_default();
        e.0 += u32::from(p.score);
        e.1 += 1;
    }
    let peers: Vec<PeerInfo> = members
        .others()
        .take(MAX_INFO_PEERS)
        .map(|m| PeerInfo {
            id: m.id.clone(),
            name: m.name.clone(),
            rtt_us: rtts.get(&m.id).copied(),
            score: per_node
                .get(m.id.as_str())
                .map(|(s, n)| (s / (*n).max(1)) as u8),
        })
        .collect();
    let (mem_total_kb, mem_free_kb) = memory();
    let (disk_total_kb, disk_free_kb) = disk(sys);
    let mut services = services;
    services.truncate(cloudy_model::info::MAX_INFO_SERVICES);
    NodeInfo {
        id: me.id.clone(),
        name: me.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        at: now_s(),
        uptime_s: proc_first(sys, "/proc/uptime")
            .map(|u| u as u64)
            .unwrap_or(0),
        load: proc_first(sys, "/proc/loadavg")
            .map(|l| (l * 100.0) as u32)
            .unwrap_or(0),
        mem_total_kb,
        mem_free_kb,
        disk_total_kb,
        disk_free_kb,
        services,
        peers,
        location: described.location.clone(),
        contact: described.contact.clone(),
        // Read each time: a few bytes, and an update changes it under a running agent's feet
        // only by a reboot, but a test's root may gain it late.
        release: cloudy_model::info::Release::load(sys.root()).ok(),
    }
}

/// The first number of a /proc file (`/proc/uptime`, `/proc/loadavg`): the kernel's own, also
/// for an agent under another root (a test's node shares the machine's kernel).
fn proc_first(_sys: &System, path: &str) -> Option<f64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// The state directory's file system (where a node keeps what it stores).
// The block counts are u32 on some 32-bit targets the agent is built for.
#[allow(clippy::unnecessary_cast)]
fn disk(sys: &System) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(&sys.state_dir()).or_else(|_| nix::sys::statvfs::statvfs("/"))
    {
        Ok(v) => {
            let f = v.fragment_size() as u64;
            (
                v.blocks() as u64 * f / 1024,
                v.blocks_available() as u64 * f / 1024,
            )
        }
        Err(_) => (0, 0),
    }
}

/// The pause between rounds for a community of `members`.
pub fn poll_every(members: u32) -> Duration {
    (POLL_PER_MEMBER * members).clamp(POLL, POLL_MAX)
}

/// Our info regathered and members asked, every `POLL`, for as long as the agent runs.
pub async fn run(
    community: Arc<Community>,
    sys: System,
    key: CommunityKey,
    members: Arc<Mutex<Members>>,
    scores: Arc<super::Prober>,
    services: impl Fn() -> Vec<ServiceInfo>,
    described: Described,
) {
    loop {
        let info = {
            let ms = members.lock().unwrap();
            let sc = scores.scores.lock().unwrap().clone();
            gather(&sys, &ms, &sc, &community.rtts(), services(), &described)
        };
        if let Err(e) = info.validate() {
            // Our own figures failing our own check is a bug; say it, serve the last good one.
            tracing::warn!("our node info is invalid: {e}");
        } else {
            community.set_mine(info);
        }
        community.poll(&key, &members).await;
        let ours: BTreeMap<String, u8> = community
            .mine
            .lock()
            .unwrap()
            .peers
            .iter()
            .filter_map(|p| Some((p.id.clone(), p.score?)))
            .collect();
        community.sample(now_s(), &ours);
        let n = members.lock().unwrap().members.len() as u32;
        tokio::time::sleep(super::jittered(poll_every(n))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::members::tests::{key_of, member};

    fn seen(byte: char, ok_at: u64) -> Seen {
        Seen {
            info: NodeInfo {
                id: byte.to_string().repeat(32),
                name: format!("n{byte}"),
                ..Default::default()
            },
            rtt_us: Some(200),
            ok_at,
            error: None,
        }
    }

    /// Our info names every member as a peer with our latency to it; a member that left the
    /// list leaves the map and its trail; a trail holds a day at most.
    #[test]
    fn the_view_follows_the_member_list_and_trails_are_bounded() {
        let mut ms = Members::signed(member('a', "na"), key_of('a'));
        ms.merge(vec![member('b', "nb"), member('c', "nc")]);
        let c = Community::new();
        let rtts = [("b".repeat(32), 250)].into();
        let mine = gather(
            &System::new("/"),
            &ms,
            &Scores::default(),
            &rtts,
            vec![],
            &Described::default(),
        );
        assert_eq!(mine.validate(), Ok(()));
        assert_eq!(mine.peers.len(), 2);
        assert_eq!(mine.peers[0].rtt_us, Some(250));
        assert!(mine.mem_total_kb > 0, "the kernel's figures");
        c.set_mine(mine);
        {
            let mut s = c.seen.lock().unwrap();
            for b in ['b', 'c', 'd'] {
                s.insert(b.to_string().repeat(32), seen(b, 1000));
            }
        }
        let ids: Vec<String> = c
            .view(&ms)
            .nodes
            .iter()
            .map(|n| n.info.name.clone())
            .collect();
        assert_eq!(ids, ["na", "nb", "nc"], "d is no member: not on the map");
        for k in 0..(TRAIL_LEN as u64 + 50) {
            c.sample(1000 + k * TRAIL_EVERY_S, &BTreeMap::new());
            c.sample(1000 + k * TRAIL_EVERY_S + 1, &BTreeMap::new());
        }
        let t = c.view_of(&ms, &"b".repeat(32)).trail;
        assert_eq!(t.len(), TRAIL_LEN, "one point per interval, a day of them");
        assert!(c.view_of(&ms, &"e".repeat(32)).trail.is_empty());
        assert_eq!(poll_every(5), POLL);
        assert_eq!(poll_every(1024), POLL_MAX);
        // A member is "late" (amber) only after FRESH_S: a round plus the fetches fit in it.
        assert!(POLL_MAX.as_secs() * 5 / 4 < FRESH_S);
    }
}
