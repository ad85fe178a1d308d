//! Names and syntax shared by the seed, records and the agent: each check takes a string and
//! says what is wrong with it, in words a seed's author can act on.

use std::net::IpAddr;

/// A node or community name: an RFC 1123 label in lowercase.
pub fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{} characters (1-63 allowed)", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("character {c:?} is not allowed in a hostname"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("starts or ends with '-'".into());
    }
    Ok(())
}

/// A node id: 32 lowercase hex digits.
pub fn is_node_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A service kind as records carry it: 1-24 of `[a-z0-9-]`, starting with a letter.
pub fn is_kind(t: &str) -> bool {
    (1..=24).contains(&t.len())
        && t.as_bytes()[0].is_ascii_lowercase()
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `ip/prefix`, prefix within the family's width.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} has no /prefix"))?;
    let ip: IpAddr = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let p: u8 = p
        .parse()
        .map_err(|_| format!("prefix {p:?} is not a number"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if p > max {
        return Err(format!("prefix /{p} is longer than {max}"));
    }
    Ok((ip, p))
}

/// `host:port` or `[v6]:port`; resolution waits until the network is up.
pub fn check_endpoint(s: &str) -> Result<(), String> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or("no :port")?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or("port is not 1-65535")?;
    if host.is_empty()
        || host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err("host is not a name or address".into());
    }
    Ok(())
}

pub fn check_ifname(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 15
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{s:?} is not an interface name (1-15 letters, digits, '-', '_', '.')"
        ));
    }
    Ok(())
}

/// The netname is also the VPN interface's name, so it carries the interface limits.
pub fn check_netname(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 15
        || !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "{s:?} is not 1-15 lowercase letters, digits or '_'"
        ));
    }
    Ok(())
}

/// A stream's id, as seeds, records and URLs carry it.
pub fn check_stream_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("{id:?} is not 1-64 of [A-Za-z0-9_-]"));
    }
    Ok(())
}

/// A provider named by a user: a node name or a node id.
pub fn check_provider(p: &str) -> Result<(), String> {
    if is_node_id(p) || check_hostname(p).is_ok() {
        Ok(())
    } else {
        Err(format!("{p:?} is neither a node name nor a node id"))
    }
}

/// An Argon2 PHC string (`$argon2id$v=19$...`); a plain password is never one.
pub fn is_password_hash(h: &str) -> bool {
    password_hash::PasswordHash::new(h).is_ok_and(|p| p.algorithm.as_str().starts_with("argon2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_kinds() {
        assert!(check_hostname("node-1").is_ok());
        assert!(check_hostname("-x").is_err());
        assert!(check_hostname("Bad Name").is_err());
        assert!(is_node_id(&"a".repeat(32)));
        assert!(!is_node_id("../../etc/passwd"));
        assert!(is_kind("tahoe-introducer"));
        assert!(!is_kind("Serf"));
        assert!(!is_kind("1x"));
        assert!(check_provider("ab").is_ok());
        assert!(check_provider("a b").is_err());
    }
}
