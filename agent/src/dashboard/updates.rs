//! The Updates tab: this node's release and update state (what `cloudy-agent update status`
//! prints: what is held, when it installs, the last check's outcome, a fallback in red), a
//! "Check now" button, and which release versions run across the community (from the members'
//! node infos). Every text through `esc`.

use std::collections::BTreeMap;

use axum::extract::State as AxState;
use axum::response::{IntoResponse, Redirect, Response};

use super::html::{self, render, Html};
use super::web::{ask, page, state, unavailable, Shared};
use crate::control::{Reply, Request as Ask, UpdateAction};
use crate::probe::community::CommunityView;
use crate::update::Report;

async fn report(web: &super::web::Web, action: UpdateAction) -> Result<Report, Response> {
    match ask(web, Ask::Update { action }).await? {
        Reply::Update { report, .. } => Ok(*report),
        other => Err(unavailable(&format!("unexpected reply {other:?}"))),
    }
}

/// Rows of (version, board, node names), most nodes first; nodes without a release count as
/// "unknown".
pub fn versions(v: &CommunityView) -> Html {
    let mut by: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for n in &v.nodes {
        let (ver, board) = match &n.info.release {
            Some(r) => (r.version.clone(), r.board.clone()),
            None => ("unknown".into(), "-".into()),
        };
        by.entry((ver, board))
            .or_default()
            .push(n.info.name.clone());
    }
    let mut rows: Vec<_> = by.into_iter().collect();
    rows.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let mut h = Html::default();
    for ((ver, board), names) in rows {
        h.push("<tr><td>")
            .text_in(&ver)
            .push("</td><td>")
            .text_in(&board)
            .push("</td><td>")
            .text_in(&format!("{}: {}", names.len(), names.join(", ")))
            .push("</td></tr>");
    }
    h
}

fn state_rows(r: &Report) -> Html {
    let mut h = Html::default();
    for line in r.lines() {
        let (k, v) = line.split_once(':').unwrap_or(("", &line));
        h.push("<tr><th>")
            .text_in(k.trim())
            .push("</th><td>")
            .text_in(v.trim())
            .push("</td></tr>");
    }
    h
}

/// The fallback and a refusal, in red above the state.
fn alerts(r: &Report) -> Html {
    let mut h = Html::default();
    if let Some(f) = &r.fallback {
        h.push("<div class=\"msg bad\" id=\"update-fallback\">")
            .text_in(f)
            .push("</div>");
    }
    if let Some(o) = r.last.as_ref().filter(|o| o.kind == "refused") {
        h.push("<div class=\"msg bad\" id=\"update-refused\">Refused: ")
            .text_in(&o.message)
            .push("</div>");
    }
    h
}

pub(crate) async fn updates_page(AxState(web): AxState<Shared>) -> Response {
    let s = match state(&web).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let r = match report(&web, UpdateAction::Status).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let community = match ask(&web, Ask::Community { node: None }).await {
        Ok(Reply::Community(v)) => Some(*v),
        _ => None,
    };
    let fallback = alerts(&r);
    let body = render(
        html::UPDATES,
        &[
            ("fallback", fallback),
            ("state", state_rows(&r)),
            (
                "versions",
                community.as_ref().map(versions).unwrap_or_default(),
            ),
        ],
    );
    page("Updates", &s, "/updates", body)
}

pub(crate) async fn check_form(AxState(web): AxState<Shared>) -> Response {
    match report(&web, UpdateAction::Check).await {
        Ok(_) => Redirect::to("/updates").into_response(),
        Err(r) => r,
    }
}

pub(crate) async fn api_updates(AxState(web): AxState<Shared>) -> Response {
    match report(&web, UpdateAction::Status).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::community::Seen;
    use cloudy_model::info::{NodeInfo, Release};

    #[test]
    fn versions_are_counted_and_escaped() {
        let node = |i: u32, v: Option<&str>| Seen {
            info: NodeInfo {
                id: format!("{i:032x}"),
                name: format!("n{i}"),
                release: v.map(|v| Release {
                    board: "pc-amd64".into(),
                    version: v.into(),
                }),
                ..Default::default()
            },
            rtt_us: None,
            ok_at: 0,
            error: None,
        };
        let v = CommunityView {
            nodes: vec![
                node(1, Some("1.1")),
                node(2, Some("1.0")),
                node(3, Some("1.1")),
                node(4, None),
            ],
            ..Default::default()
        };
        let h = versions(&v).into_string();
        let first = h.find("1.1").unwrap();
        assert!(first < h.find("1.0").unwrap(), "most nodes first: {h}");
        assert!(h.contains("2: n1, n3") && h.contains("unknown"), "{h}");
        let r = Report {
            fallback: Some("the update to <b>1.1</b> did not come up; back on 1.0".into()),
            ..Default::default()
        };
        assert!(!state_rows(&r).into_string().contains("<b>"));
        let a = alerts(&r).into_string();
        assert!(
            a.contains("id=\"update-fallback\"") && a.contains("&lt;b&gt;1.1"),
            "{a}"
        );
        let refused = Report {
            last: Some(crate::update::state::Outcome {
                at: 1,
                kind: "refused".into(),
                message: "only 1 valid signature(s) by the community's update keys, 2 needed"
                    .into(),
            }),
            ..Default::default()
        };
        let a = alerts(&refused).into_string();
        assert!(a.contains("Refused: only 1 valid signature(s)"), "{a}");
        assert!(alerts(&Report::default()).into_string().is_empty());
    }
}
