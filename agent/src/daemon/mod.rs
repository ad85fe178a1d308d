//! `cloudy-agent run`: applies the seed, prints the ready line, then (when the seed names a
//! community, or setup mode made or joined one) keeps the node in its mesh: the exchange service, gossip with members, tincd
//! supervised, services, the control socket and the dashboard. Every step reconciles, so a
//! restart after a crash at any point ends in the same node.
//!
//! `boot` applies the seed and prints the ready line; `node` runs the node in its community;
//! `serve` answers members on the exchange port; `setup` is setup mode, for a node whose seed
//! names no community: its dashboard creates or joins one, and the node starts in it; `front`
//! holds what both start (the dashboard's ports and certificate, the login screen's lines).

pub mod boot;
pub mod front;
pub mod node;
pub mod options;
pub mod ready;
pub mod serve;
pub mod setup;

pub use boot::run;
pub use options::Options;
