//! A read-only HTTP server on loopback for a PXE bundle under test. QEMU's built-in TFTP
//! answers block by block, which makes fetching the live ISO the slow part of a PXE boot; the
//! guest reaches this server instead through a `guestfwd` from its 10.0.2.100:80.
//!
//! It serves the regular files directly inside one directory, to GET and HEAD only, one thread
//! per connection; it listens on 127.0.0.1 only and stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the guest finds the server: QEMU's user network forwards this address to it.
pub const GUEST_ADDR: &str = "10.0.2.100";

pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

pub fn serve(dir: &Path) -> std::io::Result<Server> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (dir, flag) = (dir.to_path_buf(), stop.clone());
    std::thread::Builder::new()
        .name("pxe-http".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let dir = dir.clone();
                let _ = std::thread::Builder::new()
                    .name("pxe-http-conn".into())
                    .spawn(move || {
                        let _ = answer(conn, &dir);
                    });
            }
        })?;
    Ok(Server { addr, stop })
}

fn answer(conn: TcpStream, dir: &Path) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.by_ref().take(8192).read_line(&mut request)?;
    // The headers are read and ignored: nothing here depends on them.
    loop {
        let mut h = String::new();
        if reader.by_ref().take(8192).read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut out = std::io::BufWriter::with_capacity(1 << 16, conn);
    if method != "GET" && method != "HEAD" {
        return status(&mut out, "405 Method Not Allowed");
    }
    let Some(path) = file_in(dir, target) else {
        return status(&mut out, "404 Not Found");
    };
    let mut f = std::fs::File::open(&path)?;
    let len = f.metadata()?.len();
    write!(
        out,
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    if method == "GET" {
        std::io::copy(&mut f, &mut out)?;
    }
    out.flush()
}

/// A request target naming a regular file directly inside `dir`, or nothing.
fn file_in(dir: &Path, target: &str) -> Option<PathBuf> {
    let name = target.strip_prefix('/')?;
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let path = dir.join(name);
    (ok && std::fs::symlink_metadata(&path).ok()?.is_file()).then_some(path)
}

fn status(out: &mut impl Write, line: &str) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.0 {line}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(port: u16, request: &str) -> String {
        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn serves_files_in_the_directory_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cloudy.iso"), b"live system").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/secret"), b"no").unwrap();
        let s = serve(d.path()).unwrap();
        let ok = get(s.port(), "GET /cloudy.iso HTTP/1.0\r\nHost: x\r\n\r\n");
        assert!(
            ok.starts_with("HTTP/1.0 200 OK\r\n") && ok.ends_with("\r\n\r\nlive system"),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 11\r\n"));
        let head = get(s.port(), "HEAD /cloudy.iso HTTP/1.0\r\n\r\n");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        for bad in [
            "/sub/secret",
            "/../etc/passwd",
            "/sub",
            "/",
            "/missing",
            "cloudy.iso",
        ] {
            let r = get(s.port(), &format!("GET {bad} HTTP/1.0\r\n\r\n"));
            assert!(r.starts_with("HTTP/1.0 404 "), "{bad}: {r}");
        }
        assert!(get(s.port(), "POST /cloudy.iso HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405 "));
    }
}
