//! Our doorbells as Avahi service files (`/etc/avahi/services/cloudy-*.service`): the image
//! runs the real avahi-daemon, which picks the files up by inotify and announces them (and
//! sends goodbyes when a file goes). Only files named `cloudy-*` are ours to write or remove.
//! A file holds a doorbell (kind, node, port, revision, time, MAC), never a record's fields:
//! `avahi-browse` still shows what a node offers, and nothing a record would admit to.
//!
//! All records share one DNS-SD type, `_cloudy._tcp` (service type names like
//! `tahoe-introducer` are longer than DNS-SD's 15-character limit); the Cloudy type is the
//! `t` TXT key. Every value is XML-escaped: a description is data, never markup.

use std::collections::BTreeSet;
use std::path::Path;

use cloudy_model::record::{Doorbell, Seals};
use serde::Serialize;

use crate::os::files::{render_xml, FileError};
use crate::os::system::{write_atomic, System};

pub const SERVICES_DIR: &str = "/etc/avahi/services";
pub const DNSSD_TYPE: &str = "_cloudy._tcp";

const SERVICE: &str = include_str!("templates/cloudy.service");

/// Instance name: unique per node and service, made only of validated parts.
pub fn instance(d: &Doorbell) -> String {
    format!("{} {} {}", d.node, d.kind, d.port)
}

fn file_name(d: &Doorbell) -> String {
    format!("cloudy-{}-{}.service", d.kind, d.port)
}

pub fn render(r: &Doorbell, seals: &Seals) -> Result<String, FileError> {
    render_service(&instance(r), DNSSD_TYPE, r.port, r.to_txt(seals))
}

fn render_service(
    name: &str,
    dnssd_type: &str,
    port: u16,
    txt: Vec<(String, String)>,
) -> Result<String, FileError> {
    #[derive(Serialize)]
    struct Service<'a> {
        name: &'a str,
        dnssd_type: &'a str,
        port: u16,
        txt: Vec<Txt>,
    }
    #[derive(Serialize)]
    struct Txt {
        key: String,
        value: String,
    }
    let service = Service {
        name,
        dnssd_type,
        port,
        txt: txt
            .into_iter()
            .map(|(key, value)| Txt { key, value })
            .collect(),
    };
    render_xml("cloudy.service", SERVICE, &service)
}

/// A pending node's announcement (`mesh::pending`), the one file of a node without a
/// community: `sync` removes it like any `cloudy-*` file once the node publishes as a member.
pub const PENDING_FILE: &str = "cloudy-pending.service";

/// Writes (or, with None, removes) the pending announcement; `name` is the instance name.
pub fn pending(
    sys: &System,
    a: Option<(&str, &crate::mesh::pending::Announcement)>,
) -> std::io::Result<()> {
    let dir = sys.path(SERVICES_DIR);
    let path = dir.join(PENDING_FILE);
    let Some((name, a)) = a else {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    };
    std::fs::create_dir_all(&dir)?;
    let text = render_service(name, crate::mesh::pending::DNSSD_TYPE, a.port, a.to_txt())
        .map_err(std::io::Error::other)?;
    write_atomic(&path, text.as_bytes(), 0o644)
}

/// Makes the directory hold exactly our current doorbells' files. Returns whether anything
/// changed (avahi-daemon reloads on its own).
pub fn sync(sys: &System, records: &[(Doorbell, Seals)]) -> std::io::Result<bool> {
    let dir = sys.path(SERVICES_DIR);
    std::fs::create_dir_all(&dir)?;
    let mut want = BTreeSet::new();
    let mut changed = false;
    for (r, seals) in records {
        let name = file_name(r);
        let path = dir.join(&name);
        let text = render(r, seals).map_err(std::io::Error::other)?;
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            write_atomic(&path, text.as_bytes(), 0o644)?;
            changed = true;
        }
        want.insert(name);
    }
    changed |= remove_others(&dir, &want)?;
    Ok(changed)
}

fn remove_others(dir: &Path, keep: &BTreeSet<String>) -> std::io::Result<bool> {
    let mut changed = false;
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("cloudy-") && name.ends_with(".service") && !keep.contains(&name) {
            std::fs::remove_file(e.path())?;
            changed = true;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::record;

    // The doorbell carries no description any more (records travel only by the exchange), so
    // the escaping is checked on the MAC, the one value that is not validated to a syntax.
    #[test]
    fn files_follow_the_records_and_escape_everything() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new(dir.path());
        let d = sys.path(SERVICES_DIR);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ssh.service"), "not ours").unwrap();
        let r = Doorbell::of(&record('a', "web", 8080), "0123456789ab", 1);
        let evil = "</txt-record><txt-record>evil=1 & \"q\"";
        let seals = Seals {
            mac: evil.into(),
            sig: "ab".into(),
        };
        assert!(sync(&sys, &[(r.clone(), seals.clone())]).unwrap());
        let text = std::fs::read_to_string(d.join("cloudy-web-8080.service")).unwrap();
        assert!(
            text.contains("mac=&lt;/txt-record&gt;&lt;txt-record&gt;evil=1 &amp; &quot;q&quot;")
        );
        assert_eq!(text.matches("<txt-record>").count(), r.to_txt(&seals).len());
        assert!(!sync(&sys, &[(r, seals)]).unwrap(), "no rewrite");
        assert!(sync(&sys, &[]).unwrap());
        assert!(!d.join("cloudy-web-8080.service").exists(), "withdrawn");
        assert!(d.join("ssh.service").exists(), "other files are not ours");
    }
}
