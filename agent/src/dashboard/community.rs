//! The Community tab: the map of every member (`map`), a table of them, a page per member with
//! its info and its last 24 h, and `GET /api/community`. All of it from the agent's control
//! socket (`Community` request); nothing here trusts a member's text without `esc`.

use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::html::{self, render, Html};
use super::map::{self, Health};
use super::web::{ask, page, state, unavailable, Shared, Web};
use crate::control::{Reply, Request as Ask};
use crate::probe::community::{CommunityView, Seen};

async fn community(web: &Web, node: Option<String>) -> Result<CommunityView, Response> {
    match ask(web, Ask::Community { node }).await? {
        Reply::Community(v) => Ok(*v),
        other => Err(unavailable(&format!("unexpected reply {other:?}"))),
    }
}

pub(crate) async fn api_community(AxState(web): AxState<Shared>) -> Response {
    match community(&web, None).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

fn kib(kb: u64) -> String {
    match kb {
        0 => "?".into(),
        k if k >= 1 << 20 => format!("{:.1} GiB", k as f64 / f64::from(1 << 20)),
        k => format!("{} MiB", k / 1024),
    }
}

fn free(free: u64, total: u64) -> String {
    if total == 0 {
        return "?".into();
    }
    format!("{} of {} ({}%)", kib(free), kib(total), free * 100 / total)
}

fn uptime(s: u64) -> String {
    match s {
        s if s >= 86400 => format!("{} d {} h", s / 86400, s % 86400 / 3600),
        s if s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} min", s / 60),
    }
}

fn services(s: &Seen) -> String {
    let v: Vec<String> = s
        .info
        .services
        .iter()
        .map(|x| format!("{}:{} {}", x.kind, x.port, x.state))
        .collect();
    v.join(", ")
}

/// The table under the map: a row per node, every cell escaped.
pub fn rows(v: &CommunityView) -> Html {
    let mut h = Html::default();
    for s in &v.nodes {
        let i = &s.info;
        h.push("<tr><td><a href=\"/community/node?id=")
            .text_in(&i.id)
            .push("\">")
            .text_in(&i.name)
            .push("</a>");
        if i.id == v.me {
            h.push(" (this node)");
        }
        h.push("</td>");
        for c in [
            Health::of(s, v.at).word().to_string(),
            i.location.clone().unwrap_or_default(),
            uptime(i.uptime_s),
            format!("{:.2}", f64::from(i.load) / 100.0),
            free(i.mem_free_kb, i.mem_total_kb),
            free(i.disk_free_kb, i.disk_total_kb),
            services(s),
            s.rtt_us.map(super::map::latency).unwrap_or_default(),
        ] {
            h.push("<td>").text_in(&c).push("</td>");
        }
        h.push("</tr>");
    }
    h
}

pub(crate) async fn community_page(AxState(web): AxState<Shared>) -> Response {
    let (s, v) = match (state(&web).await, community(&web, None).await) {
        (Ok(s), Ok(v)) => (s, v),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let body = render(
        html::COMMUNITY,
        &[("map", map::render(&v)), ("rows", rows(&v))],
    );
    page("Community", &s, "/community", body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeQuery {
    id: String,
}

pub(crate) async fn node_info_page(
    AxState(web): AxState<Shared>,
    Query(q): Query<NodeQuery>,
) -> Response {
    if !cloudy_model::names::is_node_id(&q.id) {
        return (StatusCode::BAD_REQUEST, "?id= must be a node id").into_response();
    }
    let (s, v) = match (state(&web).await, community(&web, Some(q.id.clone())).await) {
        (Ok(s), Ok(v)) => (s, v),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let Some(n) = v.nodes.iter().find(|n| n.info.id == q.id) else {
        return (StatusCode::NOT_FOUND, "no such member (yet)").into_response();
    };
    let i = &n.info;
    let mut svc = Html::default();
    for x in &i.services {
        svc.push("<tr><td>")
            .text_in(&x.kind)
            .push("</td><td>")
            .text_in(&x.port.to_string())
            .push("</td><td>")
            .text_in(&x.state)
            .push("</td></tr>");
    }
    let mut peers = Html::default();
    for p in &i.peers {
        peers
            .push("<tr><td>")
            .text_in(&p.name)
            .push("</td><td>")
            .text_in(&p.rtt_us.map(super::map::latency).unwrap_or_default())
            .push("</td><td>")
            .text_in(&p.score.map(|s| s.to_string()).unwrap_or_default())
            .push("</td></tr>");
    }
    let body = render(
        html::COMMUNITY_NODE,
        &[
            ("name", Html::text(&i.name)),
            ("id", Html::text(&i.id)),
            ("health", Html::text(Health::of(n, v.at).word())),
            ("version", Html::text(&i.version)),
            ("uptime", Html::text(&uptime(i.uptime_s))),
            (
                "load",
                Html::text(&format!("{:.2}", f64::from(i.load) / 100.0)),
            ),
            ("memory", Html::text(&free(i.mem_free_kb, i.mem_total_kb))),
            ("disk", Html::text(&free(i.disk_free_kb, i.disk_total_kb))),
            ("location", Html::text(i.location.as_deref().unwrap_or("-"))),
            ("contact", Html::text(i.contact.as_deref().unwrap_or("-"))),
            (
                "heard",
                Html::text(&format!("{} s ago", v.at.saturating_sub(n.ok_at))),
            ),
            ("chart", map::chart(&v.trail, v.at)),
            ("services", svc),
            ("peers", peers),
        ],
    );
    page(&i.name, &s, "/community", body)
}
