//! Logins under a flood, through the dashboard's router served in-process on loopback: each
//! client connects from its own 127.0.0.x address, so the router sees distinct addresses.
//! A checked wrong password answers 401, a try refused unchecked 429, a login 303.

use super::{router, Web};
use crate::dashboard::auth::Auth;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RIGHT: &str = "right horse battery";

/// A hash that costs here about what the default costs on a small node (0.1-0.5 s there,
/// ~20 ms here): Argon2id with the default memory (19 MiB) and 10 passes instead of 2. The
/// dashboard checks with the parameters in the hash. With the default, 60 queued checks take
/// about 1 s here, too close to the bound to tell a fair gate from an unfair one.
fn node_cost_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(19456, 10, 1, None).unwrap();
    let salt = SaltString::encode_b64(&crate::os::identity::random_bytes::<16>()).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

async fn serve() -> SocketAddr {
    let web = Arc::new(Web {
        auth: Auth::new(node_cost_hash(RIGHT)),
        control: "/nonexistent/control.sock".into(),
        fingerprint: String::new(),
        https_port: 8443,
        ui_port: 8444,
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            l,
            router(web).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}

/// `POST /login` from `from`; the answer's status.
async fn login(server: SocketAddr, from: &str, password: &str) -> u16 {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let mut c = s.connect(server).await.unwrap();
    let body = format!("user=admin&password={}", password.replace(' ', "+"));
    let req = format!(
        "POST /login HTTP/1.1\r\nHost: cloudy\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    let head = String::from_utf8_lossy(&out[..out.len().min(12)]).to_string();
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"))
}

/// 60 parallel wrong logins from one address while another address logs in: that login takes
/// no more than 1 s longer than it does alone.
#[tokio::test(flavor = "current_thread")]
async fn a_flood_from_one_address_does_not_hold_up_another() {
    let server = serve().await;
    let t = Instant::now();
    assert_eq!(login(server, "127.0.0.3", RIGHT).await, 303);
    let solo = t.elapsed();

    let flood: Vec<_> = (0..60)
        .map(|_| tokio::spawn(login(server, "127.0.0.2", "wrong")))
        .collect();
    // Every try of the flood is in before the admin comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    assert_eq!(login(server, "127.0.0.4", RIGHT).await, 303);
    let flooded = t.elapsed();
    eprintln!("login alone {solo:?}, during a flood of 60 from another address {flooded:?}");
    assert!(
        flooded < solo + Duration::from_secs(1),
        "the flood held the login up: {flooded:?} against {solo:?} alone"
    );
    for f in flood {
        let status = f.await.unwrap();
        assert!(status == 401 || status == 429, "{status}");
    }
}

/// Parallel wrong logins from one address: at most one password check per backoff step (a
/// check answers 401; a try refused without one, 429). The first check is free; each next one
/// waits at least `Auth::delay(1)` = 0.5 s after the one before.
#[tokio::test(flavor = "current_thread")]
async fn parallel_wrong_logins_get_one_check_per_backoff_step() {
    let server = serve().await;
    let t0 = Instant::now();
    let tries: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let status = login(server, "127.0.0.2", "wrong").await;
                (status, t0.elapsed())
            })
        })
        .collect();
    let mut checked = Vec::new();
    for t in tries {
        let (status, at) = t.await.unwrap();
        match status {
            401 => checked.push(at),
            429 => {}
            s => panic!("status {s}"),
        }
    }
    checked.sort();
    eprintln!("wrong passwords checked at {checked:?}");
    assert!(!checked.is_empty(), "the first try is checked");
    let early = checked
        .iter()
        .filter(|t| **t < Duration::from_millis(500))
        .count();
    assert!(early <= 1, "{early} checks in the first 0.5 s: {checked:?}");
    for w in checked.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(500),
            "two checks closer than a backoff step: {checked:?}"
        );
    }
}
