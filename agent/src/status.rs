//! `cloudy-agent status`: what this node is and what went wrong, from the state on disk, so it
//! works whether or not the agent is running.

use anyhow::Result;

use crate::members::{Members, MEMBERS_FILE};
use crate::system::System;
use crate::{identity, seed};

pub fn print(sys: &System) -> Result<i32> {
    let cmdline = if sys.is_live() {
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
    } else {
        String::new()
    };
    let loaded = seed::load(sys, &cmdline);
    let id = std::fs::read_to_string(sys.path(identity::NODE_ID_FILE)).unwrap_or_default();
    println!(
        "node:       {}",
        loaded
            .seed
            .node
            .name
            .as_deref()
            .unwrap_or(identity::FALLBACK_NAME)
    );
    println!(
        "node id:    {}",
        if id.trim().is_empty() {
            "(not made yet)"
        } else {
            id.trim()
        }
    );
    match &loaded.source {
        Some(p) => println!("seed:       {}", p.display()),
        None => println!("seed:       (none; image defaults)"),
    }
    for e in &loaded.errors {
        println!("seed error: {e}");
    }
    match loaded.seed.community.as_ref() {
        None => println!("community:  (none: this node stays alone)"),
        Some(c) => println!("community:  {}", c.name),
    }
    if loaded.seed.community.is_some() {
        let pidfile = sys.path(&format!("/run/tinc.{}.pid", loaded.seed.netname()));
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        match pid.filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
            Some(p) => println!("tincd:      running (pid {p})"),
            None => println!("tincd:      not running"),
        }
    }
    if let Ok(text) = std::fs::read_to_string(sys.path(MEMBERS_FILE)) {
        if let Ok(ms) = serde_json::from_str::<Members>(&text) {
            println!("members:    {}", ms.members.len());
            for m in ms.members.values() {
                let me = if m.id == ms.me { " (this node)" } else { "" };
                println!(
                    "  {:<24} {:<16} vpn {:<15} {}{me}",
                    m.tinc_name(),
                    m.address,
                    m.vpn,
                    &m.id[..8]
                );
            }
        }
    }
    Ok(if loaded.errors.is_empty() { 0 } else { 1 })
}
