//! cloudy-agent: turns a booted Cloudy image into a node of a community microcloud.
//!
//! The binary is a thin CLI over these modules; each module owns one thing on the node.

pub mod daemon;
pub mod discovery;
pub mod identity;
pub mod join;
pub mod members;
pub mod network;
pub mod ready;
pub mod secrets;
pub mod seed;
pub mod status;
pub mod supervise;
pub mod system;
pub mod tinc;
