//! The Node tab: this node, its peers, its services and what its neighbours measured.

use axum::extract::State as AxState;
use axum::response::Response;

use super::html::{self, render, Html};
use super::web::{page, state, Shared};
use crate::control::State;

pub(crate) async fn node_page(AxState(web): AxState<Shared>) -> Response {
    let s = match state(&web).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let tincd = match s.tincd {
        Some(p) => format!("running (pid {p})"),
        None => "not running".into(),
    };
    let body = render(
        html::NODE,
        &[
            ("node", Html::text(&s.node)),
            ("node_id", Html::text(&s.node_id)),
            ("community", Html::text(&s.community)),
            ("address", Html::text(&s.address)),
            ("vpn", Html::text(&s.vpn)),
            ("tincd", Html::text(&tincd)),
            ("fingerprint", Html::text(&web.fingerprint)),
            ("storage", storage(&web.control)),
            ("seed_errors", seed_errors(&s)),
            ("medium_warnings", medium_warnings(&s)),
            ("peers", peers(&s)),
            ("services", services(&s)),
            ("managed", managed(&s)),
            ("views", views(&s)),
        ],
    );
    page("Node", &s, "/node", body)
}

/// Where state is kept, as the agent recorded it at boot (beside the control socket, both in
/// the node's /run): loud when every boot makes a new node.
fn storage(control: &std::path::Path) -> Html {
    use crate::os::storage;
    let recorded = storage::read(&control.with_file_name(storage::STATE_NAME));
    let mut h = Html::default();
    match recorded {
        Some(st) if st.kept => {
            h.text_in(&st.line());
        }
        Some(st) => {
            h.push("<strong class=\"err\">")
                .text_in(&st.line())
                .push("</strong>");
        }
        None => {
            h.text_in("not recorded (the agent has not checked)");
        }
    }
    h
}

/// One `<tr>` of text cells.
fn row(h: &mut Html, cells: &[&str]) {
    h.push("<tr>");
    for c in cells {
        h.push("<td>").text_in(c).push("</td>");
    }
    h.push("</tr>");
}

fn seed_errors(s: &State) -> Html {
    let mut h = Html::default();
    if s.seed_errors.is_empty() {
        h.push("<p id=\"seed-errors\">None.</p>");
        return h;
    }
    h.push("<ul id=\"seed-errors\">");
    for e in &s.seed_errors {
        h.push("<li class=\"err\">").text_in(e).push("</li>");
    }
    h.push("</ul>");
    h
}

/// Secrets left on the boot medium: nothing when it is clean, else loud.
fn medium_warnings(s: &State) -> Html {
    let mut h = Html::default();
    if s.medium_warnings.is_empty() {
        return h;
    }
    h.push("<h2>Boot medium</h2><ul id=\"medium-warnings\">");
    for w in &s.medium_warnings {
        h.push("<li class=\"err\"><strong>")
            .text_in(w)
            .push("</strong></li>");
    }
    h.push("</ul>");
    h
}

fn peers(s: &State) -> Html {
    let mut h = Html::default();
    for p in &s.peers {
        row(&mut h, &[&p.name, &p.tinc_name, &p.address, &p.vpn]);
    }
    h
}

fn services(s: &State) -> Html {
    let mut h = Html::default();
    for r in s.providers.iter().filter(|r| r.local) {
        let port = r.record.port.to_string();
        row(
            &mut h,
            &[
                &r.record.kind,
                &r.record.description,
                &r.record.host,
                &port,
                "this node",
            ],
        );
    }
    h
}

fn managed(s: &State) -> Html {
    let mut h = Html::default();
    for (name, st) in &s.managed {
        let state = serde_json::to_value(st.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let (pid, restarts) = (st.pid.to_string(), st.restarts.to_string());
        row(
            &mut h,
            &[
                name,
                &state,
                &pid,
                &restarts,
                st.last_error.as_deref().unwrap_or(""),
            ],
        );
    }
    h
}

/// The probe summaries of other members: what they measured of every provider.
fn views(s: &State) -> Html {
    let mut h = Html::default();
    if s.views.is_empty() {
        h.push("<p>No summaries fetched yet (after the next scan).</p>");
    }
    for v in &s.views {
        h.push("<h3>")
            .text_in(&v.node)
            .push("</h3><table class=\"view\"><thead><tr><th>type</th><th>provider</th><th>port</th><th>score</th></tr></thead><tbody>");
        for e in &v.scores {
            let (port, score) = (e.port.to_string(), e.score.to_string());
            row(&mut h, &[&e.kind, &e.node, &port, &score]);
        }
        h.push("</tbody></table>");
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::storage::{State as Kept, NOT_KEPT};

    /// Issue 14: the Node tab says when every boot makes a new node, and where state is kept.
    #[test]
    fn the_node_tab_says_whether_state_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let control = d.path().join("control.sock");
        assert!(storage(&control).into_string().contains("not recorded"));
        let write = |s: &Kept| {
            std::fs::write(
                d.path().join(crate::os::storage::STATE_NAME),
                serde_json::to_vec(s).unwrap(),
            )
            .unwrap()
        };
        write(&Kept {
            kept: false,
            place: "RAM".into(),
            device: None,
            problem: None,
        });
        let h = storage(&control).into_string();
        assert!(h.contains(NOT_KEPT) && h.contains("class=\"err\""), "{h}");
        write(&Kept {
            kept: true,
            place: "data disk /dev/vdb (label cloudy-data)".into(),
            device: Some("/dev/vdb".into()),
            problem: None,
        });
        let h = storage(&control).into_string();
        assert!(h.contains("kept on data disk /dev/vdb"), "{h}");
    }
}
