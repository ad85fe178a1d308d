//! A small HTTP/1.1 client for the dashboard tests that connects from inside a node's network
//! namespace (the socket is made by a thread that entered it; the test itself stays outside).

#![allow(dead_code)]

pub mod chromium;
pub mod tls;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A TCP connection to `addr` made inside namespace `ns`.
pub fn connect_in(ns: &str, addr: &str) -> std::io::Result<TcpStream> {
    let path = format!("/var/run/netns/{ns}");
    let addr = addr.to_string();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&path)?;
        // Only this short-lived thread changes namespace; the socket stays in it.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(150)))?;
        Ok(s)
    })
    .join()
    .unwrap()
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The session cookie a login set (`name=value`).
    pub fn cookie(&self) -> Option<String> {
        self.header("set-cookie")
            .and_then(|c| c.split(';').next())
            .map(str::to_string)
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(
    ns: &str,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut s = connect_in(ns, addr)?;
    exchange(&mut s, addr, method, path, headers, body)
}

/// One request on an open connection (plain or TLS), `Host: host`.
pub fn exchange(
    s: &mut (impl Read + Write),
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    // Some servers (chromedriver) keep the connection open despite `Connection: close`: read
    // what the headers announce rather than to the end.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let body = raw.len() - end - 4;
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match len {
                Some(l) => body >= l,
                None if head.contains("transfer-encoding: chunked") => raw.ends_with(b"0\r\n\r\n"),
                None => head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304"),
            };
            if done {
                break;
            }
        }
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> std::io::Result<Reply> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let i = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk"))?;
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..i]).trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[i + 2..i + 2 + n]);
            rest = &rest[i + 2 + n + 2..];
        }
        body = out;
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub fn get(ns: &str, addr: &str, path: &str, cookie: Option<&str>) -> Reply {
    let h: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    request(ns, addr, "GET", path, &h, b"").unwrap()
}

pub fn post_form(ns: &str, addr: &str, path: &str, cookie: Option<&str>, form: &str) -> Reply {
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(c) = cookie {
        h.push(("Cookie", c));
    }
    request(ns, addr, "POST", path, &h, form.as_bytes()).unwrap()
}

pub fn post_json(ns: &str, addr: &str, path: &str, cookie: Option<&str>, json: &str) -> Reply {
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(c) = cookie {
        h.push(("Cookie", c));
    }
    request(ns, addr, "POST", path, &h, json.as_bytes()).unwrap()
}

/// Logs in; the session cookie.
pub fn login(ns: &str, addr: &str, password: &str) -> String {
    let r = post_form(
        ns,
        addr,
        "/login",
        None,
        &format!("user=admin&password={}", urlencode(password)),
    );
    assert_eq!(r.status, 303, "login refused: {}", r.text());
    r.cookie().expect("a session cookie")
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits until the dashboard in `ns` accepts connections.
pub fn wait_up(ns: &str, addr: &str, within: Duration) {
    let t0 = std::time::Instant::now();
    while connect_in(ns, addr).is_err() {
        assert!(
            t0.elapsed() < within,
            "dashboard at {addr} not up in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A real Syncthing in `ns`, listening for sync on 0.0.0.0:`port`, nothing announced beyond;
/// returns its device id and the child (killed on drop).
pub struct Syncthing {
    pub device_id: String,
    child: std::process::Child,
}

impl Drop for Syncthing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn syncthing(ns: &str, home: &std::path::Path, port: u16) -> Syncthing {
    let o = std::process::Command::new("syncthing")
        .args(["generate", "--no-default-folder"])
        .arg(format!("--home={}", home.display()))
        .output()
        .expect("syncthing generate");
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    let device_id = out
        .lines()
        .find_map(|l| l.split("Device ID: ").nth(1))
        .unwrap_or_else(|| panic!("no device id in: {out}"))
        .trim()
        .to_string();
    let cfg = home.join("config.xml");
    let c = std::fs::read_to_string(&cfg).unwrap();
    let c = c
        .replace(
            "<listenAddress>default</listenAddress>",
            &format!("<listenAddress>tcp://0.0.0.0:{port}</listenAddress>"),
        )
        .replace(
            "<globalAnnounceEnabled>true</globalAnnounceEnabled>",
            "<globalAnnounceEnabled>false</globalAnnounceEnabled>",
        )
        .replace(
            "<localAnnounceEnabled>true</localAnnounceEnabled>",
            "<localAnnounceEnabled>false</localAnnounceEnabled>",
        )
        .replace(
            "<relaysEnabled>true</relaysEnabled>",
            "<relaysEnabled>false</relaysEnabled>",
        )
        .replace(
            "<natEnabled>true</natEnabled>",
            "<natEnabled>false</natEnabled>",
        )
        .replace("<urAccepted>0</urAccepted>", "<urAccepted>-1</urAccepted>")
        .replace(
            "<startBrowser>true</startBrowser>",
            "<startBrowser>false</startBrowser>",
        );
    std::fs::write(&cfg, c).unwrap();
    let log = std::fs::File::create(home.with_extension("log")).unwrap();
    let child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "syncthing",
            "serve",
            "--no-browser",
            "--no-restart",
            "--no-upgrade",
        ])
        .arg(format!("--home={}", home.display()))
        .env("STNOUPGRADE", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("syncthing serve");
    Syncthing { device_id, child }
}

/// Three one-second HLS segments of noise at ~4 Mbit/s (x264, incompressible on purpose), in
/// `dir/<stream_id>/index.m3u8`.
pub fn hls_segments(dir: &std::path::Path, stream_id: &str) {
    let d = dir.join(stream_id);
    std::fs::create_dir_all(&d).unwrap();
    let st = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("nullsrc=s=640x360:r=25,geq=random(1)*255:128:128")
        .args([
            "-t",
            "3",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "4M",
            "-maxrate",
            "4M",
        ])
        .args([
            "-bufsize",
            "2M",
            "-g",
            "25",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "0",
        ])
        .args(["-hls_playlist_type", "vod"])
        .arg(d.join("index.m3u8"))
        .status()
        .expect("ffmpeg");
    assert!(st.success(), "ffmpeg made no HLS segments");
}

/// Python's http.server on `port` in `ns`, serving `dir`; killed on drop.
pub struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn serve_dir(ns: &str, dir: &std::path::Path, port: u16) -> Served {
    let child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--directory",
        ])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 http.server");
    Served(child)
}

/// A TCP listener on `addr` inside `ns` that accepts and closes connections, until dropped.
pub struct Listening {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn listen_at(ns: &str, addr: &str) -> Listening {
    let path = format!("/var/run/netns/{ns}");
    let addr = addr.to_string();
    let l = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        std::net::TcpListener::bind(&addr).unwrap()
    })
    .join()
    .unwrap();
    l.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        while !s.load(std::sync::atomic::Ordering::SeqCst) {
            while l.accept().is_ok() {}
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Listening {
        stop,
        thread: Some(thread),
    }
}
