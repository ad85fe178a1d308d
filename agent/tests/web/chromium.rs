//! Chromium through chromedriver in a node's namespace, spoken to with plain WebDriver JSON:
//! the browser tests' one driver.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver in a namespace, spoken to with plain WebDriver JSON.
pub struct Driver {
    ns: String,
    addr: String,
    session: String,
    child: Child,
    shots: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = super::request(
            &self.ns,
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            &[],
            b"",
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Chromium with `args` beside the usual headless ones; screenshots go to
    /// `CARGO_TARGET_TMPDIR/<shots>`.
    pub fn start(ns: &str, profile: &std::path::Path, args: &[String], shots: &str) -> Driver {
        let port = 9515;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "chromedriver",
                &format!("--port={port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let addr = format!("127.0.0.1:{port}");
        super::wait_up(ns, &addr, Duration::from_secs(20));
        let mut all: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
        ]
        .map(String::from)
        .to_vec();
        all.push(format!("--user-data-dir={}", profile.display()));
        all.extend(args.iter().cloned());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": all
            }
        }}});
        let r = super::request(
            ns,
            &addr,
            "POST",
            "/session",
            &[("Content-Type", "application/json")],
            caps.to_string().as_bytes(),
        )
        .unwrap();
        let v = r.json();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(shots);
        std::fs::create_dir_all(&shots).unwrap();
        Driver {
            ns: ns.into(),
            addr,
            session,
            child,
            shots,
        }
    }

    pub fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let b = if method == "GET" {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let r = super::request(
            &self.ns,
            &self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            &[("Content-Type", "application/json")],
            &b,
        )
        .unwrap();
        let v = r.json();
        assert!(
            r.status == 200,
            "WebDriver {method} {path}: {} {v}",
            r.status
        );
        v["value"].clone()
    }

    pub fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", json!({}))
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), json!({}));
    }

    pub fn type_in(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/clear"), json!({}));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        );
    }

    /// Runs a function in the page (WebDriver's own channel, not the page's scripts).
    pub fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    pub fn text(&self, css: &str) -> String {
        self.eval(&format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            json!(css)
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// (provider, score text) of each row in the providers table, top to bottom.
    pub fn rows(&self) -> Vec<(String, String)> {
        let v = self.eval(
            "return [...document.querySelectorAll('#providers tbody tr')].map(r => \
             [r.dataset.provider, r.querySelector('td.score').textContent]);",
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Polls until the page shows what `ok` wants (a form post may still be loading).
    pub fn wait_until(&self, what: &str, ok: impl Fn(&Driver) -> bool) {
        let t0 = Instant::now();
        while !ok(self) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{what}: not within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn shot(&self, name: &str) {
        use base64::Engine;
        let b64 = self.call("GET", "/screenshot", json!({}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        let p = self.shots.join(format!("{name}.png"));
        std::fs::write(&p, png).unwrap();
        eprintln!("screenshot: {}", p.display());
    }
}

pub fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Chromium pins a certificate by the SHA-256 of its public key (SubjectPublicKeyInfo).
pub fn spki(root: &std::path::Path) -> String {
    use base64::Engine;
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let pem = std::fs::read_to_string(root.join("var/lib/cloudy/dashboard.crt")).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let cert = webpki::EndEntityCert::try_from(&der).unwrap();
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(
        cert.subject_public_key_info().as_ref(),
    ))
}
