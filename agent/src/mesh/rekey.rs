//! Replacing the community key (`cloudy-agent rekey`, the dashboard's button, the control
//! request `rekey`). Everything a member derives from the key (the exchange's proof and
//! sealing keys, the mDNS doorbell MAC and the join services' tag, Serf's gossip key) comes
//! from one shared `exchange::CommunityKey`, so a switch is one write: every task takes the new
//! key at once, and the replaced one still opens requests for `exchange::overlap()` so members
//! in flight are not cut.
//!
//! - `roll`: a new random key with the next serial, handed to every other member reachable now
//!   over the exchange (`exchange::send_rekey`, under the key they hold, signed by our node
//!   key), then adopted here. Members named to be removed leave every list that takes the
//!   rekey and get nothing.
//! - `follow`: on every switch, the key and its history are stored (`os::secrets`), the LAN
//!   tag republished and Serf's keyring moved to the new gossip key (the old one removed after
//!   the overlap); every `PULL` we ask one member for the key it holds now
//!   (`exchange::fetch_newkey`), which it answers, even under a replaced key, to members whose
//!   node key it pins and has not removed: so a member that was away catches up from anyone.
//!
//! A node that only ever held the old key (never a member, or removed) is refused: after the
//! overlap its proofs open only a `newkey` request, and that is answered to pinned members only.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mesh::exchange::{self, CommunityKey, Generation, Rekey};
use crate::mesh::members::Members;
use crate::os::identity::NodeKey;
use crate::os::secrets;
use crate::os::system::System;

/// How often a member asks another for the current key (one small exchange).
pub const PULL: Duration = Duration::from_secs(10);
/// Members told at once during a rekey.
const AT_ONCE: usize = 16;

/// The stored generations (`secrets::KEY_HISTORY_FILE`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct History {
    current: Generation,
    #[serde(default)]
    old: Vec<Generation>,
}

/// The key ring a node starts with: `key` (the seed's or the stored one) with its history when
/// the history knows it. A seed still holding a key a rekey replaced (a read-only medium) does
/// not bring it back: the history's current key wins, and is stored again.
pub fn ring(sys: &System, community: &str, key: &str) -> CommunityKey {
    let history = match secrets::key_history(sys) {
        Ok(Some(b)) => match serde_json::from_slice::<History>(&b) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(
                    "{}: {e}; starting from the community key alone (remove the file if the key changed by hand)",
                    secrets::KEY_HISTORY_FILE
                );
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::error!("{e}");
            None
        }
    };
    match history {
        Some(h) if h.current.key == key => CommunityKey::with_history(community, h.current, h.old),
        Some(h) if h.old.iter().any(|g| g.key == key) => {
            tracing::warn!(
                "the seed's community key was replaced by a rekey (serial {}): using the current key",
                h.current.serial
            );
            let ring = CommunityKey::with_history(community, h.current, h.old);
            if let Err(e) = save(sys, &ring) {
                tracing::error!("storing the current community key: {e}");
            }
            ring
        }
        // A key the history never held: the operator gave a new one by hand.
        _ => CommunityKey::derive(community, key),
    }
}

pub fn save(sys: &System, key: &CommunityKey) -> Result<(), secrets::SecretError> {
    let h = History {
        current: key.current(),
        old: key.old(),
    };
    let text = serde_json::to_vec_pretty(&h).expect("history serialises");
    secrets::replace_community_key(sys, &h.current.key, &text)
}

/// How telling one member went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Told {
    pub node: String,
    pub node_id: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error("{0:?} is not a member here (name or node id; `cloudy-agent status` lists them)")]
    Unknown(String),
    #[error("this node cannot remove itself")]
    Myself,
}

/// A new community key, 32 random bytes in base64 (44 characters).
fn new_key() -> String {
    use std::fmt::Write;
    // Hex would do; base64's alphabet is what `openssl rand -base64` gives, as the README says.
    let b = crate::os::identity::random_bytes::<32>();
    let mut s = String::new();
    for chunk in b.chunks(3) {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            let _ = if i <= chunk.len() {
                s.write_char(A[(n >> (18 - 6 * i)) as usize & 63] as char)
            } else {
                s.write_char('=')
            };
        }
    }
    s
}

/// Node ids of `names` (names or ids) among the members; never ours.
pub fn resolve(members: &Members, names: &[String]) -> Result<Vec<String>, RekeyError> {
    names
        .iter()
        .map(|n| {
            let m = members
                .members
                .values()
                .find(|m| m.id == *n || m.name == *n)
                .ok_or_else(|| RekeyError::Unknown(n.clone()))?;
            if m.id == members.me {
                return Err(RekeyError::Myself);
            }
            Ok(m.id.clone())
        })
        .collect()
}

/// Rolls the community key: removes `remove` (node ids) from our list, hands a new key to
/// every other member (under the key they hold now), then adopts it. The serial of the new
/// key and how each member took it; members that did not answer get it when they come back.
pub async fn roll(
    key: &CommunityKey,
    members: &Mutex<Members>,
    node: &NodeKey,
    remove: &[String],
) -> (u64, Vec<Told>) {
    let (me, others, removed) = {
        let mut ms = members.lock().unwrap();
        ms.remove(remove);
        let others: Vec<_> = ms.others().cloned().collect();
        (ms.me.clone(), others, ms.removed.iter().cloned().collect())
    };
    let cur = key.current();
    let msg = Rekey {
        from: me,
        community: key.community(),
        key: new_key(),
        serial: cur.serial + 1,
        removed,
    };
    let mut told = Vec::new();
    for batch in others.chunks(AT_ONCE) {
        let sends = batch.iter().map(|m| {
            let addr = SocketAddr::new(m.address, m.exchange_port);
            let msg = &msg;
            async move {
                let r = exchange::send_rekey(addr, key, node, m, msg).await;
                Told {
                    node: m.name.clone(),
                    node_id: m.id.clone(),
                    ok: r.is_ok(),
                    message: match r {
                        Ok(()) => "switched to the new key".into(),
                        Err(e) => format!(
                            "not reached ({e}): it gets the new key from any member when it is back"
                        ),
                    },
                }
            }
        });
        told.extend(futures_util::future::join_all(sends).await);
    }
    key.adopt(msg.generation());
    tracing::info!(
        "community key replaced (serial {}): {} of {} members told",
        msg.serial,
        told.iter().filter(|t| t.ok).count(),
        told.len()
    );
    (msg.serial, told)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::members::tests::{key_of, member};

    #[test]
    fn new_keys_are_long_random_and_usable() {
        let (a, b) = (new_key(), new_key());
        assert_eq!(a.len(), 44);
        assert_ne!(a, b);
        assert!(a.chars().count() >= cloudy_model::seed::MIN_COMMUNITY_KEY);
    }

    #[test]
    fn the_stored_history_survives_a_seed_holding_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let old = "the old key of this community";
        secrets::community_key(&sys, Some(old)).unwrap();
        let k = ring(&sys, "c", old);
        assert!(k.adopt(Generation {
            key: "the new key of this community".into(),
            serial: 1,
            retired: 0,
        }));
        save(&sys, &k).unwrap();
        // A read-only seed hands the old key again at the next boot.
        secrets::community_key(&sys, Some(old)).unwrap();
        let again = ring(&sys, "c", old);
        assert_eq!(again.current().serial, 1);
        assert_eq!(again.current().key, "the new key of this community");
        assert_eq!(again.old()[0].key, old);
        assert_eq!(
            secrets::community_key(&sys, None).unwrap().as_deref(),
            Some("the new key of this community")
        );
        // A key the history never held (changed by hand) starts over.
        let fresh = ring(&sys, "c", "a key given by hand, entirely new");
        assert_eq!(fresh.current().serial, 0);
    }

    #[test]
    fn a_damaged_or_foreign_history_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        for bad in [
            &b"not json"[..],
            br#"{"current":{"key":"k","serial":1},"old":[],"extra":1}"#,
            br#"{"current":{"key":"k","serial":"one"}}"#,
        ] {
            sys.write_atomic(secrets::KEY_HISTORY_FILE, bad, 0o600)
                .unwrap();
            let k = ring(&sys, "c", "the key the seed gives us");
            assert_eq!(k.current().serial, 0);
            assert_eq!(k.current().key, "the key the seed gives us");
            assert!(k.old().is_empty());
        }
    }

    #[test]
    fn names_resolve_to_members_never_to_us() {
        let mut ms = Members::signed(member('a', "me"), key_of('a'));
        ms.merge(vec![member('b', "other")]);
        let b = member('b', "other").id;
        assert_eq!(resolve(&ms, &["other".into()]).unwrap(), vec![b.clone()]);
        assert_eq!(resolve(&ms, std::slice::from_ref(&b)).unwrap(), vec![b]);
        assert!(matches!(
            resolve(&ms, &["me".into()]),
            Err(RekeyError::Myself)
        ));
        assert!(matches!(
            resolve(&ms, &["nobody".into()]),
            Err(RekeyError::Unknown(_))
        ));
    }
}
