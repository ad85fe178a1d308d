//! cloudy-agent: turns a booted Cloudy image into a node of a community microcloud.
//!
//! The binary is a thin CLI over this library. The library is in layers, a folder each; a
//! module imports only from layers below its own (`tests/layers.rs` holds every file to it):
//!
//! ```text
//! cloudy-model  names, the kinds table, the service record, probe summary, node info, the seed
//! os            system paths, supervisor, network (rtnetlink), identity, secrets, files, http
//! mesh          members, tinc, the exchange protocol, LAN discovery (mDNS), serf, gossip
//! catalog       the live catalog, publishing (avahi files, serf tags), browsing (mDNS, serf)
//! probe         each provider's quality from this node (score 0-100), checks per kind, and
//!               select (ranking, the one provider lookup), community (node infos: the map)
//! services      the Service trait and the built-in services (the VPN, seed-declared ones)
//! kinds         one folder per service kind (tahoe, syncthing, streaming), never importing
//!               each other; the kinds table in cloudy-model says how the rest treats each
//! registry      building services by name, the manager, the "use a service" flow
//! update        signed A/B updates: fetch and verify, serve to members, install (RAUC), roll out
//! control       the agent's typed request socket
//! dashboard     the unprivileged web UI on it
//! daemon        `cloudy-agent run`: boot and the ready line, the node in its community,
//!               the exchange server
//! status        `cloudy-agent status`
//! ```

pub mod catalog;
pub mod control;
pub mod daemon;
pub mod dashboard;
pub mod kinds;
pub mod mesh;
pub mod os;
pub mod probe;
pub mod registry;
pub mod services;
pub mod status;
pub mod update;
