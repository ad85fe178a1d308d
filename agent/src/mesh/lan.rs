//! Finding members on the LAN by mDNS (`_cloudy-join._tcp`), so nodes on one network need no
//! bootstrap peers in their seed. A record only says "an exchange service may be here": whoever
//! answers still has to pass the exchange protocol's key check, so a forged record costs at most
//! a few failed dials, and `mesh::candidates` bounds how many records are kept and dialled.

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

pub const SERVICE_TYPE: &str = "_cloudy-join._tcp.local.";

#[derive(Debug, thiserror::Error)]
#[error("mDNS: {0}")]
pub struct DiscoveryError(#[from] mdns_sd::Error);

/// Publishes our exchange service and browses for others of the same community (by `tag`, which
/// is derived from the community key but reveals nothing of it).
pub struct Lan {
    daemon: ServiceDaemon,
    instance: String,
    port: u16,
    props: Vec<(String, String)>,
    published: Option<String>,
    /// Where we published last, to publish again under a new tag.
    address: Option<IpAddr>,
    /// Our community's tag, as the browse thread compares it (it changes with a rekey).
    tag: Arc<std::sync::Mutex<String>>,
    /// How many join services with another community's tag were heard: a wrong key is
    /// otherwise silent (the nodes just never meet).
    pub foreign: Arc<AtomicUsize>,
}

/// Foreign services remembered by name; more are still counted as this many.
const MAX_FOREIGN: usize = 256;

impl Lan {
    pub fn start(
        instance: &str,
        node_id: &str,
        address: Option<IpAddr>,
        port: u16,
        tag: &str,
    ) -> Result<(Lan, mpsc::UnboundedReceiver<SocketAddr>), DiscoveryError> {
        let daemon = ServiceDaemon::new()?;
        let props = vec![
            ("c".to_string(), tag.to_string()),
            ("id".to_string(), node_id.to_string()),
        ];
        let mut lan = Lan {
            daemon,
            instance: instance.into(),
            port,
            props,
            published: None,
            address: None,
            tag: Arc::new(std::sync::Mutex::new(tag.to_string())),
            foreign: Arc::new(AtomicUsize::new(0)),
        };
        let our_tag = lan.tag.clone();
        let foreign = lan.foreign.clone();
        if let Some(address) = address {
            lan.publish(address)?;
        }
        let daemon = &lan.daemon;
        let events = daemon.browse(SERVICE_TYPE)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let me = node_id.to_string();
        // mdns-sd runs its own thread and hands events over a blocking channel.
        std::thread::Builder::new()
            .name("mdns-browse".into())
            .spawn(move || {
                let mut seen_foreign = HashSet::new();
                while let Ok(ev) = events.recv() {
                    let ServiceEvent::ServiceResolved(s) = ev else {
                        continue;
                    };
                    let tag = our_tag.lock().unwrap().clone();
                    let other = s
                        .txt_properties
                        .get_property_val_str("c")
                        .is_some_and(|c| c != tag.as_str());
                    if other
                        && seen_foreign.len() < MAX_FOREIGN
                        && seen_foreign.insert(s.get_fullname().to_string())
                    {
                        tracing::warn!(
                            "a member with another key was seen on the LAN: {} (its community key differs from ours; \
                             check that every seed has the same [community] key)",
                            s.get_fullname()
                        );
                        foreign.store(seen_foreign.len(), Ordering::Relaxed);
                    }
                    if s.txt_properties.get_property_val_str("c") != Some(tag.as_str())
                        || s.txt_properties.get_property_val_str("id") == Some(me.as_str())
                    {
                        continue;
                    }
                    for a in &s.addresses {
                        let ip = a.to_ip_addr();
                        if usable(ip) && tx.send(SocketAddr::new(ip, s.port)).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| DiscoveryError(mdns_sd::Error::Msg(e.to_string())))?;
        Ok((lan, rx))
    }

    /// (Re)publishes our exchange service at `address`, withdrawing an earlier record.
    pub fn publish(&mut self, address: IpAddr) -> Result<(), DiscoveryError> {
        self.address = Some(address);
        if let Some(old) = self.published.take() {
            let _ = self.daemon.unregister(&old);
        }
        let host = format!("{}.local.", self.instance);
        let props: Vec<(&str, &str)> = self
            .props
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &self.instance,
            &host,
            address,
            self.port,
            &props[..],
        )?;
        self.published = Some(info.get_fullname().to_string());
        self.daemon.register(info)?;
        Ok(())
    }
}

impl Lan {
    /// Our community's tag after a rekey: browsed services are compared with it, and our own
    /// service is published again under it.
    pub fn set_tag(&mut self, tag: &str) -> Result<(), DiscoveryError> {
        *self.tag.lock().unwrap() = tag.to_string();
        for (k, v) in self.props.iter_mut() {
            if k == "c" {
                *v = tag.to_string();
            }
        }
        match self.address {
            Some(a) => self.publish(a),
            None => Ok(()),
        }
    }
}

/// What the LAN says about one `_cloudy._tcp` instance: raw TXT pairs, parsed by `catalog`.
#[derive(Debug)]
pub enum Seen {
    Resolved {
        fullname: String,
        port: u16,
        txt: Vec<(String, Option<Vec<u8>>)>,
    },
    Removed(String),
}

/// TXT pairs beyond this are not even copied: a record is far smaller.
const MAX_TXT_PAIRS: usize = 32;

impl Lan {
    /// Browses `ty` (e.g. `_cloudy._tcp.local.`) on the same mDNS socket as the exchange service.
    pub fn browse(&self, ty: &str) -> Result<mpsc::UnboundedReceiver<Seen>, DiscoveryError> {
        let events = self.daemon.browse(ty)?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("mdns-services".into())
            .spawn(move || {
                while let Ok(ev) = events.recv() {
                    let seen = match ev {
                        ServiceEvent::ServiceResolved(s) => Seen::Resolved {
                            fullname: s.fullname.clone(),
                            port: s.port,
                            txt: s
                                .txt_properties
                                .iter()
                                .take(MAX_TXT_PAIRS + 1)
                                .map(|p| (p.key().to_string(), p.val().map(<[u8]>::to_vec)))
                                .collect(),
                        },
                        ServiceEvent::ServiceRemoved(_, fullname) => Seen::Removed(fullname),
                        _ => continue,
                    };
                    if tx.send(seen).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| DiscoveryError(mdns_sd::Error::Msg(e.to_string())))?;
        Ok(rx)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// Link-local IPv6 needs a scope id a socket address from a record cannot be trusted with.
fn usable(ip: IpAddr) -> bool {
    crate::os::network::pick_address(&[(ip, 0)]).is_some()
}
