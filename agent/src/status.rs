//! `cloudy-agent status`: what this node is and what went wrong, from the state on disk, so it
//! works whether or not the agent is running.

use anyhow::Result;

use crate::mesh::members::{Members, MEMBERS_FILE};
use crate::os::identity;
use crate::os::system::System;

/// `status --json`: the node, its seed and where its state is kept, as one JSON object.
pub fn json(sys: &System) -> Result<i32> {
    let loaded = crate::os::stored::load_seed(sys);
    let id = std::fs::read_to_string(sys.path(identity::NODE_ID_FILE)).unwrap_or_default();
    let recorded = crate::os::storage::read(&sys.path(crate::os::storage::STATE_FILE));
    let v = serde_json::json!({
        "node": loaded.seed.node.name.as_deref().unwrap_or(identity::FALLBACK_NAME),
        "node_id": Some(id.trim()).filter(|i| !i.is_empty()),
        "seed": loaded.source.as_ref().map(|p| p.display().to_string()),
        "seed_errors": loaded.errors,
        "community": loaded.seed.community.as_ref().map(|c| c.name.clone()),
        "state": {
            "kept": recorded.as_ref().map(|r| r.kept),
            "place": recorded.as_ref().map(|r| r.place.clone()),
            "device": recorded.as_ref().and_then(|r| r.device.clone()),
            "problem": recorded.as_ref().and_then(|r| r.problem.clone()),
            "line": crate::os::storage::line(sys),
        },
        "update": crate::update::offline_report(sys),
    });
    println!("{v}");
    Ok(if loaded.errors.is_empty() { 0 } else { 1 })
}

/// `agent`: what the running agent answered on its control socket (`control::cli::agent_line`).
pub fn print(sys: &System, agent: &str) -> Result<i32> {
    let loaded = crate::os::stored::load_seed(sys);
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
    let name = loaded
        .seed
        .node
        .name
        .as_deref()
        .unwrap_or(identity::FALLBACK_NAME);
    let addresses = addresses();
    if addresses.is_empty() {
        println!("addresses:  none yet (waiting for DHCP or the seed's [network])");
    } else {
        let list: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        println!("addresses:  {}", list.join(", "));
    }
    let https = loaded.seed.dashboard_https_port();
    println!("url:        https://{name}.local:{https}/");
    if let Some(a) = addresses.iter().find(|a| a.is_ipv4()) {
        println!("            https://{a}:{https}/");
    }
    match &loaded.source {
        Some(p) => println!("seed:       {}", p.display()),
        None => println!("seed:       (none; image defaults)"),
    }
    for e in &loaded.errors {
        println!("seed error: {e}");
    }
    println!("storage:    {}", crate::os::storage::line(sys));
    // Updates, from what the agent keeps on disk (`cloudy-agent update status` asks it live).
    let update = crate::update::offline_report(sys);
    for l in update.lines() {
        println!("update {l}");
    }
    for w in crate::os::secrets::medium_warnings(sys, &loaded) {
        println!("{w}");
    }
    match loaded.seed.community.as_ref() {
        None => println!(
            "community:  (none yet) {}",
            crate::os::issue::setup_line(name, https)
        ),
        Some(c) => println!("community:  {}", c.name),
    }
    println!("agent:      {agent}");
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
    let foreign = std::fs::read_to_string(sys.path(crate::mesh::gossip::FOREIGN_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if foreign > 0 {
        println!(
            "lan:        a member with another key was seen: {foreign} node(s) on the LAN have another community key (check that every seed has the same [community] key)"
        );
    }
    let certificate = crate::os::certificate::stored_fingerprint(sys);
    match &certificate {
        None => {
            println!("dashboard:  (no certificate yet: made when `cloudy-agent run` starts)")
        }
        Some(Ok(f)) => println!(
            "dashboard:  https port {}, certificate SHA-256 {f}",
            loaded.seed.dashboard_https_port()
        ),
        Some(Err(e)) => println!("dashboard:  OFF: {e}"),
    }
    let mesh_error = std::fs::read_to_string(sys.path(crate::mesh::MESH_ERROR_FILE)).ok();
    if let Some(e) = &mesh_error {
        println!("mesh error: {}", e.trim());
    }
    print_services(sys);
    let catalog = std::fs::read_to_string(sys.path(crate::catalog::CATALOG_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<crate::catalog::Catalog>(&t).ok());
    if let Some(c) = catalog {
        println!(
            "services:   {} known (`cloudy-agent services` lists them)",
            c.entries.len()
        );
    }
    let certificate_ok = !matches!(certificate, Some(Err(_)));
    Ok(
        if loaded.errors.is_empty() && mesh_error.is_none() && certificate_ok {
            0
        } else {
            1
        },
    )
}

/// This node's reachable addresses, asked of the kernel now (the agent need not run).
fn addresses() -> Vec<std::net::IpAddr> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    rt.block_on(async {
        match crate::os::network::Net::connect() {
            Ok(net) => crate::os::issue::addresses(&net).await,
            Err(_) => Vec::new(),
        }
    })
}

/// Each service the agent runs (and tincd): state, pid, restarts, last error.
fn print_services(sys: &System) {
    use crate::registry::manager::StateFile;
    use crate::services::STATE_FILE;
    let Some(f) = std::fs::read(sys.path(STATE_FILE))
        .ok()
        .and_then(|t| serde_json::from_slice::<StateFile>(&t).ok())
    else {
        return;
    };
    let age = crate::catalog::now_ms().saturating_sub(f.written) / 1000;
    println!(
        "processes:  (as the agent saw them {age} s ago{})",
        if age > 30 {
            "; is it still running?"
        } else {
            ""
        }
    );
    println!(
        "  {:<18} {:<9} {:>7} {:>8}  {:<24}  LAST ERROR",
        "NAME", "STATE", "PID", "RESTARTS", "CONFINEMENT"
    );
    for (name, s) in &f.services {
        let state = serde_json::to_value(s.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let pid = if s.pid == 0 {
            "-".to_string()
        } else {
            s.pid.to_string()
        };
        // Shown while it runs: what the kernel says confines the process.
        let confinement = s
            .confinement
            .as_deref()
            .filter(|_| s.pid != 0)
            .unwrap_or("-");
        println!(
            "  {:<18} {:<9} {:>7} {:>8}  {:<24}  {}",
            name,
            state,
            pid,
            s.restarts,
            confinement,
            s.last_error.as_deref().unwrap_or("-")
        );
    }
}

/// `cloudy-agent services`: the catalog the running agent keeps, one row per provider.
pub fn services(sys: &System, kind: Option<&str>, json: bool) -> Result<i32> {
    use crate::catalog::{now_ms, Catalog, CATALOG_FILE};
    let path = sys.path(CATALOG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "{}: {e}: the catalog exists while `cloudy-agent run` runs with a community",
                path.display()
            );
            return Ok(1);
        }
    };
    let cat: Catalog =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let now = now_ms();
    if now.saturating_sub(cat.written) > 30_000 {
        eprintln!(
            "warning: the catalog was last written {} s ago; is the agent running?",
            now.saturating_sub(cat.written) / 1000
        );
    }
    let rows: Vec<serde_json::Value> = cat
        .entries
        .iter()
        .filter(|e| kind.is_none_or(|k| e.record.kind == k))
        .map(|e| {
            let r = &e.record;
            let latest = e.seen.values().copied().max().unwrap_or(0);
            serde_json::json!({
                "type": r.kind,
                "description": r.description,
                "node": r.node,
                "node_id": r.node_id,
                "host": r.host,
                "ip": r.ip,
                "port": r.port,
                "microcloud": r.microcloud,
                "fields": r.fields,
                "source": e.seen.keys().collect::<Vec<_>>(),
                "age_s": now.saturating_sub(latest) as f64 / 1000.0,
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<18} {:<32} {:<20} {:<15} {:>5} {:<12} {:<15} {:>5}",
        "TYPE", "DESCRIPTION", "HOST", "IP", "PORT", "MICROCLOUD", "SOURCE", "AGE"
    );
    for (row, e) in rows.iter().zip(
        cat.entries
            .iter()
            .filter(|e| kind.is_none_or(|k| e.record.kind == k)),
    ) {
        let r = &e.record;
        let desc: String = r.description.chars().take(32).collect();
        let src: Vec<String> = e
            .seen
            .keys()
            .map(|s| format!("{s:?}").to_lowercase())
            .collect();
        println!(
            "{:<18} {:<32} {:<20} {:<15} {:>5} {:<12} {:<15} {:>4.0}s",
            r.kind,
            desc,
            r.host,
            r.ip.to_string(),
            r.port,
            r.microcloud,
            src.join(","),
            row["age_s"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(0)
}
