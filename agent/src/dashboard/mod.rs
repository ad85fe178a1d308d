//! The node's dashboard: HTTPS on the node's addresses with the node's own certificate (axum and
//! rustls, one thread; `tls`), its plain-HTTP port answering only redirects (`redirect`). It is
//! run by the root agent as the unprivileged `cloudy-agent dashboard` (user `cloudy-web` where
//! the image made it), which gets the password hash, certificate and key on stdin (`Handover`).
//! It holds no state of the node: every page and `/api` answer comes from the agent's typed
//! control socket (`control`). Nothing but the login page answers without a session.
//!
//! Pages: `/login`, `/services?type=T` (a tab per type: score | description | host | IP | port
//! | microcloud | rating | action, best first; "Scan quality", "Join" and "Rate"), `/node` (tinc peers,
//! services, seed errors, other nodes' views), `/community` (the map of every member, SVG) and
//! `/community/node?id=ID` (a member's info and 24-h chart); a node in no community yet has
//! only `/setup` (name the node, create a community, join with an invitation; `setup`).
//! API: `GET /api/state`, `GET /api/community`, `GET /api/services[?type=T]`,
//! `GET /api/select?type=T`, `GET /api/node`, `POST /api/scan {"type":T?}`,
//! `POST /api/join {"type":T,"provider":P?}`, `POST /api/rate {"type":T,"provider":P,"stars":S,
//! "comment":C?}`. No JavaScript: forms and links. `/ui/<service>/` passes a local service's
//! own web UI through, behind the same login (`proxy`), on a listener of its own (`Ports::ui`):
//! another origin, so the UI's scripts cannot read the dashboard's answers. Both origins refuse
//! a state-changing request from any other origin (`csrf`).

pub mod auth;
pub(crate) mod community;
pub mod csrf;
pub mod html;
mod invite;
#[cfg(test)]
mod login_tests;
pub mod map;
mod node;
mod pending;
pub mod proxy;
pub mod redirect;
mod setup;
pub mod tls;
mod updates;
pub mod web;

use axum::extract::{ConnectInfo, Form, Query, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::control::{self, Reply, Request as Ask};
use crate::probe::select::{self, Ranked};
use auth::Auth;
use html::{render, Html};
use node::node_page;
pub use web::Web;
use web::{ask, page, state, Shared};

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(web: Shared) -> Router {
    let open = Router::new()
        .route("/login", get(login_page).post(login))
        .with_state(web.clone());
    let closed = Router::new()
        .route("/", get(|| async { Redirect::to("/services") }))
        .route("/services", get(services_page))
        .route("/node", get(node_page))
        .route(
            "/invite",
            get(invite::invite_page).post(invite::invite_form),
        )
        .route("/invite/revoke", post(invite::revoke_form))
        .route("/setup", get(setup::setup_page))
        .route("/setup/name", post(setup::name_form))
        .route("/setup/create", post(setup::create_form))
        .route("/setup/join", post(setup::join_form))
        .route("/pending", get(pending::pending_page))
        .route("/pending/approve", post(pending::approve_form))
        .route("/rekey", post(pending::rekey_form))
        .route("/community", get(community::community_page))
        .route("/community/node", get(community::node_info_page))
        .route("/api/community", get(community::api_community))
        .route("/updates", get(updates::updates_page))
        .route("/updates/check", post(updates::check_form))
        .route("/api/updates", get(updates::api_updates))
        .route("/scan", post(scan_form))
        .route("/join", post(join_form))
        .route("/rate", post(rate_form))
        .route("/logout", post(logout))
        .route("/api/state", get(api_state))
        .route("/api/services", get(api_services))
        .route("/api/node", get(api_node))
        .route("/api/select", get(api_select))
        .route("/api/scan", post(api_scan))
        .route("/api/join", post(api_join))
        .route("/api/rate", post(api_rate))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(web.clone(), require_session))
        .with_state(web.clone());
    let port = web.https_port;
    open.merge(closed)
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            csrf::guard(port, req, next)
        }))
        .layer(middleware::from_fn(headers))
}

/// The UI origin (`Ports::ui`): `/ui/<service>/...` and nothing else, behind the dashboard's
/// session; without one, the browser goes to the dashboard's login on its own origin.
pub fn ui_router(web: Shared) -> Router {
    let port = web.ui_port;
    Router::new()
        .route("/ui/{service}", get(proxy::ui_root))
        .route("/ui/{service}/", axum::routing::any(proxy::ui_index))
        .route("/ui/{service}/{*rest}", axum::routing::any(proxy::ui_path))
        .route_layer(middleware::from_fn_with_state(web.clone(), ui_session))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .with_state(web)
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            csrf::guard(port, req, next)
        }))
        .layer(middleware::from_fn(headers))
}

async fn ui_session(AxState(web): AxState<Shared>, req: Request, next: Next) -> Response {
    if session(&web, req.headers()).is_some() {
        return next.run(req).await;
    }
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(redirect::host_of)
    else {
        return (StatusCode::BAD_REQUEST, "a Host header is needed").into_response();
    };
    Redirect::to(&format!("{}/login", csrf::origin(host, web.https_port))).into_response()
}

/// Every answer: no caching, no framing, no scripts.
async fn headers(req: Request, next: Next) -> Response {
    // A service's own UI through the proxy runs its own scripts, still on this origin only.
    let csp = if req.uri().path().starts_with("/ui/") {
        proxy::csp_for(req.uri().path())
    } else {
        CSP
    };
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn session(web: &Web, h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(auth::token)
        .filter(|t| web.auth.valid(t))
        .map(str::to_string)
}

/// Pages send a browser to the login page; the API answers 401.
async fn require_session(AxState(web): AxState<Shared>, req: Request, next: Next) -> Response {
    if session(&web, req.headers()).is_some() {
        return next.run(req).await;
    }
    if req.uri().path().starts_with("/api") {
        (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "log in first (POST /login)"})),
        )
            .into_response()
    } else {
        Redirect::to("/login").into_response()
    }
}

fn login_form(error: Option<&str>) -> String {
    let e = match error {
        Some(m) => {
            let mut h = Html::raw("<p class=\"err\" id=\"error\">");
            h.text_in(m).push("</p>");
            h
        }
        None => Html::default(),
    };
    render(html::LOGIN, &[("error", e)]).into_string()
}

async fn login_page(AxState(web): AxState<Shared>, h: HeaderMap) -> Response {
    if session(&web, &h).is_some() {
        return Redirect::to("/services").into_response();
    }
    axum::response::Html(login_form(None)).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    password: String,
}

async fn login(
    AxState(web): AxState<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(f): Form<LoginForm>,
) -> Response {
    let user = if f.user.is_empty() {
        auth::USER
    } else {
        &f.user
    };
    match web.auth.login(peer.ip(), user, &f.password).await {
        Ok(token) => {
            let mut r = Redirect::to("/services").into_response();
            r.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&auth::set_cookie(&token)).expect("hex token"),
            );
            r
        }
        Err(auth::Refused::Wrong) => (
            StatusCode::UNAUTHORIZED,
            axum::response::Html(login_form(Some("Wrong user or password."))),
        )
            .into_response(),
        Err(auth::Refused::Busy { retry_after }) => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::response::Html(login_form(Some(
                    "Too many tries from your address at once: wait a moment and try again.",
                ))),
            )
                .into_response();
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs_f64().ceil() as u64),
            );
            r
        }
    }
}

async fn logout(AxState(web): AxState<Shared>, h: HeaderMap) -> Response {
    if let Some(t) = session(&web, &h) {
        web.auth.logout(&t);
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&auth::clear_cookie()).expect("ascii"),
    );
    r
}

#[derive(Deserialize)]
struct TypeQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

fn score_cell(r: &Ranked) -> Html {
    let mut h = Html::default();
    match (&r.probe, r.local) {
        (_, true) => {
            h.push("<td class=\"score none\">this node</td>");
        }
        (None, false) => {
            h.push("<td class=\"score none\" title=\"not probed yet\">–</td>");
        }
        (Some(p), false) => {
            // The blend when ratings count; the title says both parts (`select::why`).
            let shown = r.blended.map_or(p.score, |b| b.round() as u8);
            h.push("<td class=\"score ")
                .push(match shown {
                    70.. => "good",
                    40..=69 => "fair",
                    _ => "bad",
                })
                .push("\" title=\"")
                .text_in(&select::why(r))
                .push("\">")
                .text_in(&shown.to_string())
                .push("</td>");
        }
    }
    h
}

/// What users say: mean stars and how many nodes rated, and the latest comments (escaped).
fn rating_cell(r: &Ranked, comments: &[cloudy_model::rating::Rating]) -> Html {
    let mut h = Html::raw("<td class=\"rating\">");
    match &r.rating {
        Some(a) => {
            h.text_in(&format!("{:.1}/5 ({} node(s))", a.mean, a.count));
            if !a.counts() {
                h.push(" <small>(counts from ")
                    .text_in(&crate::probe::ratings::MIN_RATERS.to_string())
                    .push(")</small>");
            }
        }
        None => {
            h.push("–");
        }
    }
    for c in comments.iter().take(3) {
        h.push("<br><q class=\"comment\">")
            .text_in(&c.comment)
            .push("</q>");
    }
    h.push("</td>");
    h
}

/// The rating form, next to Join: 1-5 stars and a short comment.
fn rate_form_html(r: &Ranked) -> Html {
    let mut h = Html::raw(
        "<form method=\"post\" action=\"/rate\" class=\"rate\"><input type=\"hidden\" name=\"type\" value=\"",
    );
    h.text_in(&r.record.kind)
        .push("\"><input type=\"hidden\" name=\"provider\" value=\"")
        .text_in(&r.provider)
        .push("\"><select name=\"stars\" aria-label=\"stars\">");
    // Static markup only (`Html::push` takes no runtime text): five options, best first.
    h.push(
        "<option value=\"5\">★★★★★</option><option value=\"4\">★★★★</option>\
         <option value=\"3\">★★★</option><option value=\"2\">★★</option>\
         <option value=\"1\">★</option>",
    );
    h.push("</select><input type=\"text\" name=\"comment\" maxlength=\"")
        .text_in(&cloudy_model::rating::MAX_COMMENT.to_string())
        .push("\" placeholder=\"comment (optional)\" aria-label=\"comment\"><button type=\"submit\" class=\"rate\">Rate</button></form>");
    h
}

fn provider_row(r: &Ranked, comments: &[cloudy_model::rating::Rating]) -> Html {
    let rec = &r.record;
    let mut h = Html::raw("<tr data-provider=\"");
    h.text_in(&r.provider).push("\">");
    h.html(&score_cell(r));
    h.push("<td class=\"description\">")
        .text_in(&rec.description)
        .push("</td><td>")
        .text_in(&rec.host)
        .push("</td><td>")
        .text_in(&rec.ip.to_string())
        .push("</td><td>")
        .text_in(&rec.port.to_string())
        .push("</td><td>")
        .text_in(&rec.microcloud)
        .push("</td>");
    h.html(&rating_cell(r, comments));
    h.push("<td>");
    if r.local {
        h.push("–");
    } else {
        h.push(
            "<form method=\"post\" action=\"/join\"><input type=\"hidden\" name=\"type\" value=\"",
        )
        .text_in(&rec.kind)
        .push("\"><input type=\"hidden\" name=\"provider\" value=\"")
        .text_in(&r.provider)
        .push("\"><button type=\"submit\" class=\"join\">Join</button></form>");
        h.html(&rate_form_html(r));
    }
    h.push("</td></tr>\n");
    h
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "not scanned yet".into();
    }
    let s = crate::catalog::now_ms().saturating_sub(ms) / 1000;
    format!("last scan {s} s ago")
}

async fn services_page(
    AxState(web): AxState<Shared>,
    Query(q): Query<TypeQuery>,
    h: HeaderMap,
) -> Response {
    let s = match state(&web).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(kind) = q
        .kind
        .filter(|k| s.types.contains(k))
        .or_else(|| s.types.first().cloned())
    else {
        let body = render(
            html::MESSAGE,
            &[
                ("message", Html::text("No services known yet.")),
                ("back", Html::raw("/node")),
            ],
        );
        return page("Services", &s, "", body);
    };
    let mut rows = Html::default();
    for r in s.providers.iter().filter(|r| r.record.kind == kind) {
        let comments = s
            .comments
            .get(&r.provider)
            .map_or(&[][..], |c| c.as_slice());
        rows.html(&provider_row(r, comments));
    }
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(redirect::host_of);
    let mut body = match host {
        Some(host) => proxy::links(&web, &s.managed, host).await,
        None => Html::default(),
    };
    body.html(&render(
        html::SERVICES,
        &[
            ("kind", Html::text(&kind)),
            ("scanned", Html::text(&ago(s.scanned))),
            ("rows", rows),
        ],
    ));
    page(&kind, &s, &kind, body)
}

#[derive(Deserialize)]
struct ScanForm {
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

async fn scan_form(AxState(web): AxState<Shared>, Form(f): Form<ScanForm>) -> Response {
    let kind = f.kind.filter(|k| !k.is_empty());
    if let Err(r) = ask(&web, Ask::Scan { kind: kind.clone() }).await {
        return r;
    }
    let to = match kind {
        Some(k) => format!("/services?type={}", url_component(&k)),
        None => "/services".into(),
    };
    Redirect::to(&to).into_response()
}

/// Service types are `[a-z0-9-]`, but a query value is escaped all the same.
fn url_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
struct JoinForm {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    provider: Option<String>,
}

async fn join_form(AxState(web): AxState<Shared>, Form(f): Form<JoinForm>) -> Response {
    let s = match state(&web).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let reply = ask(
        &web,
        Ask::Join {
            kind: f.kind.clone(),
            provider: f.provider.filter(|p| !p.is_empty()),
        },
    )
    .await;
    let (ok, message) = match reply {
        Ok(Reply::Joined { ok, message, .. }) => (ok, message),
        Ok(other) => (false, format!("unexpected reply {other:?}")),
        Err(r) => return r,
    };
    outcome("Join", &s, &f.kind, ok, &message)
}

#[derive(Deserialize)]
struct RateForm {
    #[serde(rename = "type")]
    kind: String,
    provider: String,
    stars: String,
    #[serde(default)]
    comment: String,
}

/// The rating form's POST (behind the session, like Join; the SameSite=Strict cookie keeps
/// other sites' forms out). The agent checks and signs.
async fn rate_form(AxState(web): AxState<Shared>, Form(f): Form<RateForm>) -> Response {
    let s = match state(&web).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (ok, message) = match f.stars.trim().parse::<u8>() {
        Err(_) => (false, "stars must be a number from 1 to 5".to_string()),
        Ok(stars) => match ask(
            &web,
            Ask::Rate {
                kind: f.kind.clone(),
                provider: f.provider,
                stars,
                comment: f.comment,
            },
        )
        .await
        {
            Ok(Reply::Rated { message, .. }) => (true, message),
            Ok(Reply::Error { message }) => (false, message),
            Ok(other) => (false, format!("unexpected reply {other:?}")),
            Err(r) => return r,
        },
    };
    outcome("Rate", &s, &f.kind, ok, &message)
}

/// The page a form's POST answers with: what the agent said, and the way back to the kind's
/// providers.
fn outcome(
    title: &str,
    s: &crate::control::State,
    kind: &str,
    ok: bool,
    message: &str,
) -> Response {
    let back = format!("/services?type={}", url_component(kind));
    let body = render(
        html::MESSAGE,
        &[
            ("class", Html::raw(if ok { "" } else { " err" })),
            ("message", Html::text(message)),
            ("back", Html::text(&back)),
        ],
    );
    page(title, s, kind, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiRate {
    #[serde(rename = "type")]
    kind: String,
    provider: String,
    stars: u8,
    #[serde(default)]
    comment: String,
}

async fn api_rate(AxState(web): AxState<Shared>, Json(b): Json<ApiRate>) -> Response {
    match ask(
        &web,
        Ask::Rate {
            kind: b.kind,
            provider: b.provider,
            stars: b.stars,
            comment: b.comment,
        },
    )
    .await
    {
        Ok(r) => Json(r).into_response(),
        Err(r) => r,
    }
}

async fn api_state(AxState(web): AxState<Shared>) -> Response {
    match state(&web).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => r,
    }
}

async fn api_services(AxState(web): AxState<Shared>, Query(q): Query<TypeQuery>) -> Response {
    match state(&web).await {
        Ok(s) => {
            let v: Vec<&Ranked> = s
                .providers
                .iter()
                .filter(|r| q.kind.as_ref().is_none_or(|k| &r.record.kind == k))
                .collect();
            Json(v).into_response()
        }
        Err(r) => r,
    }
}

async fn api_node(AxState(web): AxState<Shared>) -> Response {
    match state(&web).await {
        Ok(s) => {
            let local: Vec<&Ranked> = s.providers.iter().filter(|r| r.local).collect();
            Json(serde_json::json!({
                "node": s.node, "node_id": s.node_id, "community": s.community,
                "address": s.address, "vpn": s.vpn, "tincd": s.tincd,
                "seed_errors": s.seed_errors, "medium_warnings": s.medium_warnings, "peers": s.peers, "services": local,
                "managed": s.managed, "views": s.views,
            }))
            .into_response()
        }
        Err(r) => r,
    }
}

async fn api_select(AxState(web): AxState<Shared>, Query(q): Query<TypeQuery>) -> Response {
    let Some(kind) = q.kind else {
        return (StatusCode::BAD_REQUEST, "?type= is required").into_response();
    };
    match ask(&web, Ask::Select { kind }).await {
        Ok(r) => Json(r).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiScan {
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

async fn api_scan(AxState(web): AxState<Shared>, body: Option<Json<ApiScan>>) -> Response {
    let kind = body.and_then(|Json(b)| b.kind);
    match ask(&web, Ask::Scan { kind }).await {
        Ok(r) => Json(r).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiJoin {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    provider: Option<String>,
}

async fn api_join(AxState(web): AxState<Shared>, Json(b): Json<ApiJoin>) -> Response {
    match ask(
        &web,
        Ask::Join {
            kind: b.kind,
            provider: b.provider,
        },
    )
    .await
    {
        Ok(r) => Json(r).into_response(),
        Err(r) => r,
    }
}

/// What the agent hands the dashboard process on its stdin (one JSON document): secrets the
/// unprivileged process could not read from /var/lib/cloudy itself.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// The Argon2 PHC hash of the admin password.
    pub hash: String,
    pub tls: Tls,
}

/// The certificate and key (PEM), or why there are none.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Tls {
    Pem { cert: String, key: String },
    Broken { error: String },
}

impl Handover {
    /// Reads and checks it (the dashboard's side).
    pub fn read(r: impl std::io::Read) -> Result<Handover, String> {
        let h: Handover =
            serde_json::from_reader(r).map_err(|e| format!("the handover on stdin: {e}"))?;
        if !cloudy_model::names::is_password_hash(h.hash.trim()) {
            return Err("the dashboard needs an Argon2 password hash on stdin".into());
        }
        Ok(h)
    }
}

/// The dashboard's ports: plain HTTP (redirects only), HTTPS (the dashboard) and the services'
/// own UIs (HTTPS, another origin).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub https: u16,
    pub ui: u16,
}

/// Both families on one socket where the kernel allows it, else IPv4 only.
async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(l) => Ok(l),
        Err(_) => tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).await,
    }
}

/// `cloudy-agent dashboard`: serves until killed. Without a usable certificate the HTTPS port
/// stays closed and the HTTP port says why (never the dashboard in clear).
pub async fn serve(ports: Ports, control: PathBuf, handover: Handover) -> std::io::Result<()> {
    let tls = match handover.tls {
        Tls::Pem { cert, key } => tls::config(&cert, &key)
            .map_err(|e| e.to_string())
            .map(|c| (c, cert)),
        Tls::Broken { error } => Err(error),
    };
    let plain = bind(ports.http).await?;
    let (config, cert) = match tls {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("dashboard: no HTTPS: {e}");
            return axum::serve(
                plain,
                redirect::broken(e).layer(middleware::from_fn(headers)),
            )
            .await;
        }
    };
    let fingerprint = crate::os::certificate::cert_der(&cert)
        .map(|der| crate::os::certificate::fingerprint(&der))
        .unwrap_or_default();
    let web = Arc::new(Web {
        auth: Auth::new(handover.hash),
        control,
        fingerprint,
        https_port: ports.https,
        ui_port: ports.ui,
    });
    let secure = tls::TlsListener::new(bind(ports.https).await?, config.clone())?;
    let uis = tls::TlsListener::new(bind(ports.ui).await?, config)?;
    tracing::info!(
        "dashboard on https port {} (http port {} redirects; services' UIs on https port {})",
        ports.https,
        ports.http,
        ports.ui
    );
    let plain = axum::serve(
        plain,
        redirect::router(ports.https).layer(middleware::from_fn(headers)),
    );
    // `tap_io` only so that axum hands the handlers the client's address (`ConnectInfo`) as
    // it does for a TcpListener.
    let secure = axum::serve(
        axum::serve::ListenerExt::tap_io(secure, |_| {}),
        router(web.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    );
    let uis = axum::serve(
        axum::serve::ListenerExt::tap_io(uis, |_| {}),
        ui_router(web).into_make_service_with_connect_info::<SocketAddr>(),
    );
    tokio::select! {
        r = plain.into_future() => r,
        r = secure.into_future() => r,
        r = uis.into_future() => r,
    }
}

/// Runs `cloudy-agent dashboard` as `cloudy-web` (when that user exists), handing it the
/// password hash and the certificate on stdin, and restarts it if it dies. It dies with the
/// agent.
pub fn supervise(
    sys: crate::os::system::System,
    exe: PathBuf,
    ports: Ports,
    certificate: Result<crate::os::certificate::Certificate, String>,
) {
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        loop {
            match run_child(&sys, &exe, ports, &certificate).await {
                Ok(st) => tracing::warn!("dashboard exited ({st}); restarting"),
                Err(e) => tracing::error!("dashboard: {e}"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    });
}

async fn run_child(
    sys: &crate::os::system::System,
    exe: &std::path::Path,
    ports: Ports,
    certificate: &Result<crate::os::certificate::Certificate, String>,
) -> std::io::Result<std::process::ExitStatus> {
    use tokio::io::AsyncWriteExt;
    let hash = std::fs::read_to_string(sys.path(crate::os::identity::DASHBOARD_HASH_FILE))?;
    let handover = Handover {
        hash: hash.trim().to_string(),
        tls: match certificate {
            Ok(c) => Tls::Pem {
                cert: c.cert_pem.clone(),
                key: c.key_pem.clone(),
            },
            Err(e) => Tls::Broken { error: e.clone() },
        },
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--root")
        .arg(sys.root())
        .args([
            "dashboard",
            "--port",
            &ports.http.to_string(),
            "--https-port",
            &ports.https.to_string(),
            "--ui-port",
            &ports.ui.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true);
    match control::web_ids() {
        Some((uid, gid)) => {
            // std drops root's supplementary groups when it changes the uid.
            cmd.uid(uid).gid(gid);
        }
        None => tracing::warn!(
            "no user {}: the dashboard runs as the agent's user",
            control::WEB_USER
        ),
    }
    // SAFETY: prctl only sets this process's parent-death signal, async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let text = serde_json::to_vec(&handover).map_err(std::io::Error::other)?;
        stdin.write_all(&text).await?;
        // Closed here: the dashboard reads to the end.
    }
    child.wait().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::record;

    #[test]
    fn every_field_of_a_row_is_escaped() {
        let evil = "<script>alert(1)</script>\"'&";
        let mut r = record('a', "web", 80);
        r.description = evil.into();
        r.node = evil.into();
        r.host = evil.into();
        r.microcloud = evil.into();
        r.kind = evil.into();
        let row = provider_row(
            &Ranked {
                provider: select::provider_id(&r),
                record: r,
                probe: None,
                local: false,
                rating: None,
                blended: None,
            },
            &[],
        )
        .into_string();
        assert!(!row.contains("<script"), "{row}");
        assert!(
            !row.contains("\"'"),
            "attribute values cannot be closed: {row}"
        );
        assert!(row.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
        assert_eq!(url_component("a b&c"), "a%20b%26c");
    }

    /// A member's comment is shown as text: `<script>` and quotes cannot leave it; the row
    /// has the rating form next to Join and shows both parts of the score.
    #[test]
    fn a_rating_comment_is_escaped_and_the_row_has_the_form() {
        let evil = "<script>alert(1)</script>\"'&";
        let r = record('a', "web", 80);
        let c = cloudy_model::rating::Rating {
            rater: "b".repeat(32),
            provider: r.node_id.clone(),
            kind: "web".into(),
            stars: 1,
            comment: evil.into(),
            seq: 1,
            sig: "0".repeat(128),
        };
        let row = provider_row(
            &Ranked {
                provider: select::provider_id(&r),
                record: r,
                probe: None,
                local: false,
                rating: Some(crate::probe::ratings::Aggregate {
                    mean: 1.0,
                    count: 3,
                }),
                blended: None,
            },
            &[c],
        )
        .into_string();
        assert!(!row.contains("<script"), "{row}");
        assert!(
            row.contains(
                "<q class=\"comment\">&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;</q>"
            ),
            "{row}"
        );
        assert!(row.contains("1.0/5 (3 node(s))"), "{row}");
        assert!(
            row.contains("action=\"/rate\"") && row.contains("name=\"stars\""),
            "{row}"
        );
        assert!(row.contains("maxlength=\"280\""), "{row}");
    }
}
