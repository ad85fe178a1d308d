//! cloudy-agent: turns a booted Cloudy image into a node of a community microcloud.
//!
//! The binary is a thin CLI over this library. The library is in layers, a folder each; a
//! module imports only from layers below its own (`tests/layers.rs` holds every file to it):
//!
//! ```text
//! cloudy-model  names, the kinds table, the service record, probe summary, the seed
//! os            system paths, supervisor, network (rtnetlink), identity, secrets, files, http
//! mesh          members, tinc, the exchange protocol, LAN discovery (mDNS), serf
//! catalog       the live catalog, publishing (avahi files, serf tags), browsing
//! probe         each provider's quality from this node (score 0-100), and select
//! services      the Service trait and the built-in ones; then one folder per kind
//!               (tahoe, syncthing, streaming), never importing each other
//! registry      building services from the seed, the manager, the "use a service" flow
//! control       the agent's typed request socket
//! dashboard     the unprivileged web UI on it
//! daemon        `cloudy-agent run`: boot, the ready line, the exchange server
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
