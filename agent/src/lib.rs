//! cloudy-agent: turns a booted Cloudy image into a node of a community microcloud.
//!
//! The binary is a thin CLI over these modules; each module owns one thing on the node:
//!
//! - `seed`, `secrets`: what the node should be, and the secrets moved off the boot medium
//! - `identity`: hostname, node id, dashboard credential, ssh keys
//! - `network`: links, primary interface and static addresses through rtnetlink
//! - `members`, `join`, `discovery`: the community's member list, swapped under the
//!   community key, with members found on the LAN by mDNS or through bootstrap peers
//! - `tinc`: tinc 1.0 keys and config; `supervise`: any child (tincd, each service) kept
//!   running with backoff
//! - `services`: one trait for every service (configure, run, health, record, accept, join);
//!   the manager running them, Tahoe-LAFS and Syncthing, `cloudy-agent join`
//! - `catalog`: service records, strictly parsed, and the catalog merging every source
//! - `avahi`, `serf`, `publish`: our records as Avahi files and Serf tags; others' records
//!   from mDNS and from Serf members (fetched over the join port), into the catalog
//! - `streaming`: live streams over HTTP (HLS), from an ffmpeg source relayed peer to peer
//! - `probe`, `select`: each provider's quality from this node (score 0-100) and the best one
//! - `control`: the agent's typed request socket; `dashboard`: the unprivileged web UI on it
//! - `daemon`: `cloudy-agent run`, tying them together; `ready`, `status`: what it reports

pub mod avahi;
pub mod catalog;
pub mod control;
pub mod daemon;
pub mod dashboard;
pub mod discovery;
pub mod identity;
pub mod join;
pub mod members;
pub mod network;
pub mod probe;
pub mod publish;
pub mod ready;
pub mod secrets;
pub mod seed;
pub mod select;
pub mod serf;
pub mod services;
pub mod status;
pub mod streaming;
pub mod supervise;
pub mod system;
pub mod tinc;
