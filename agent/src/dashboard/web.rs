//! What every page of the dashboard shares: the agent's control socket behind it, the node's
//! state from it, and the page around each tab.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::path::PathBuf;
use std::sync::Arc;

use super::auth::Auth;
use super::html::{self, render, Html};
use crate::control::{self, Reply, Request as Ask, State};

pub struct Web {
    pub auth: Auth,
    pub control: PathBuf,
    /// The served certificate's SHA-256 fingerprint (`AB:CD:...`), for the node page: the
    /// user compares it with what the browser shows.
    pub fingerprint: String,
    /// The dashboard's HTTPS port: its origin is `https://<host>:<https_port>`.
    pub https_port: u16,
    /// The services' UIs' HTTPS port (`/ui/<service>/`), another origin.
    pub ui_port: u16,
}

pub(crate) type Shared = Arc<Web>;

pub(crate) async fn ask(web: &Web, req: Ask) -> Result<Reply, Response> {
    match control::call(&web.control, &req).await {
        Ok(Reply::Error { message }) => Err(unavailable(&message)),
        Ok(r) => Ok(r),
        Err(e) => Err(unavailable(&e.to_string())),
    }
}

pub(crate) fn unavailable(message: &str) -> Response {
    tracing::warn!("dashboard: {message}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": message})),
    )
        .into_response()
}

pub(crate) async fn state(web: &Web) -> Result<State, Response> {
    match ask(web, Ask::State {}).await? {
        Reply::State(s) => Ok(*s),
        // A node in no community yet has only its setup page.
        Reply::Setup(_) => Err(axum::response::Redirect::to("/setup").into_response()),
        other => Err(unavailable(&format!("unexpected reply {other:?}"))),
    }
}

pub(crate) fn page(title: &str, s: &State, active: &str, body: Html) -> Response {
    let mut tabs = Html::default();
    for t in &s.types {
        tabs.push("<a href=\"/services?type=")
            .text_in(t)
            .push("\" class=\"");
        if t == active {
            tabs.push("on");
        }
        tabs.push("\">").text_in(t).push("</a>");
    }
    tabs.push("<a href=\"/node\" class=\"");
    if active == "/node" {
        tabs.push("on");
    }
    tabs.push("\">Node</a>");
    tabs.push("<a href=\"/community\" class=\"");
    if active == "/community" {
        tabs.push("on");
    }
    tabs.push("\">Community</a>");
    tabs.push("<a href=\"/updates\" class=\"");
    if active == "/updates" {
        tabs.push("on");
    }
    tabs.push("\">Updates</a>");
    tabs.push("<a href=\"/invite\" class=\"");
    if active == "/invite" {
        tabs.push("on");
    }
    tabs.push("\">Invite</a>");
    tabs.push("<a href=\"/pending\" class=\"");
    if active == "/pending" {
        tabs.push("on");
    }
    tabs.push("\">Pending</a>");
    let doc = render(
        html::LAYOUT,
        &[
            ("title", Html::text(title)),
            ("node", Html::text(&s.node)),
            ("community", Html::text(&s.community)),
            ("tabs", tabs),
            ("body", body),
        ],
    );
    axum::response::Html(doc.into_string()).into_response()
}
