//! The Pending tab: the pending nodes of our community heard on the LAN, an "Approve" button
//! per node and a field to approve by typed fingerprints, and the button that replaces the
//! community key. All through the agent's typed control requests (`pending`, `approve`,
//! `rekey`); the dashboard never sees the community key.

use axum::extract::State as AxState;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::html::{render, Html};
use super::web::{ask, page, state, Shared};
use crate::control::{Reply, Request as Ask, State};

const PENDING: &str = include_str!("templates/pending.html");

pub(crate) async fn pending_page(AxState(web): AxState<Shared>) -> Response {
    let s = match state(&web).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    show(&web, &s, Html::default()).await
}

async fn show(web: &Shared, s: &State, said: Html) -> Response {
    let list = match ask(web, Ask::Pending {}).await {
        Ok(Reply::Pending { list }) => list,
        Ok(_) => Vec::new(),
        Err(r) => return r,
    };
    let mut rows = Html::default();
    if list.is_empty() {
        rows.push("<tr><td colspan=\"5\">No pending node of this community is announced on the LAN.</td></tr>");
    }
    for p in &list {
        rows.push("<tr data-fingerprint=\"")
            .text_in(&p.fingerprint)
            .push("\"><td><code class=\"fp\">")
            .text_in(&p.fingerprint)
            .push("</code></td><td>")
            .text_in(&p.address)
            .push("</td><td>")
            .text_in(&p.node_id)
            .push("</td><td>")
            .text_in(&ago(p.since))
            .push("</td><td><form method=\"post\" action=\"/pending/approve\"><input type=\"hidden\" name=\"fingerprints\" value=\"")
            .text_in(&p.fingerprint)
            .push("\"><button type=\"submit\" class=\"approve\">Approve</button></form></td></tr>");
    }
    let body = render(PENDING, &[("said", said), ("list", rows)]);
    page("Pending nodes", s, "/pending", body)
}

/// How long ago a unix-ms time was, for a person: "42 s ago", "3 min ago", "2 h ago".
fn ago(ms: u64) -> String {
    let s = crate::catalog::now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn message(ok: bool, text: &str) -> Html {
    let mut h = Html::default();
    h.push(if ok {
        "<div class=\"msg\" id=\"message\">"
    } else {
        "<div class=\"msg err\" id=\"message\">"
    })
    .text_in(text)
    .push("</div>");
    h
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveForm {
    fingerprints: String,
}

/// The fingerprints of a form field: separated by spaces, commas or newlines; each checked.
fn fingerprints(field: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    // A fingerprint is 4 groups that may themselves be separated by spaces: take runs of
    // 16 base32 characters, dashes and spaces ignored, so "ABCD EFGH IJKL MNOP" is one.
    let compact: String = field.chars().filter(|c| !matches!(c, '-' | ' ')).collect();
    for part in compact.split([',', '\n', '\r', '\t', ';']) {
        if part.is_empty() {
            continue;
        }
        if part.len() % 16 != 0 || part.len() > 16 * crate::catalog::pending::MAX_APPROVE {
            return Err(crate::mesh::pending::parse_fingerprint(part)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "fingerprints: 16 characters each".into()));
        }
        for i in (0..part.len()).step_by(16) {
            let one = part.get(i..i + 16).ok_or("fingerprints: ASCII only")?;
            out.push(crate::mesh::pending::parse_fingerprint(one).map_err(|e| e.to_string())?);
        }
    }
    if out.is_empty() {
        return Err("name a fingerprint to approve".into());
    }
    Ok(out)
}

pub(crate) async fn approve_form(
    AxState(web): AxState<Shared>,
    Form(f): Form<ApproveForm>,
) -> Response {
    let s = match state(&web).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let said = match fingerprints(&f.fingerprints) {
        Err(e) => message(false, &e),
        Ok(fps) => {
            let req = Ask::Approve { fingerprints: fps };
            match req.check() {
                Err(e) => message(false, &e),
                Ok(()) => match crate::control::call(&web.control, &req).await {
                    Ok(Reply::Approved { outcomes }) => {
                        let mut h = Html::default();
                        for o in outcomes {
                            h.html(&message(o.ok, &format!("{}: {}", o.fingerprint, o.message)));
                        }
                        h
                    }
                    Ok(Reply::Error { message: m }) => message(false, &m),
                    Ok(other) => message(false, &format!("unexpected reply {other:?}")),
                    Err(e) => message(false, &e.to_string()),
                },
            }
        }
    };
    show(&web, &s, said).await
}

pub(crate) async fn rekey_form(AxState(web): AxState<Shared>) -> Response {
    let s = match state(&web).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let req = Ask::Rekey { remove: Vec::new() };
    let said = match crate::control::call(&web.control, &req).await {
        Ok(Reply::Rekeyed { serial, told }) => {
            let mut h = message(true, &format!("Community key replaced (serial {serial})."));
            for t in told {
                h.html(&message(t.ok, &format!("{}: {}", t.node, t.message)));
            }
            h
        }
        Ok(Reply::Error { message: m }) => message(false, &m),
        Ok(other) => message(false, &format!("unexpected reply {other:?}")),
        Err(e) => message(false, &e.to_string()),
    };
    show(&web, &s, said).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fingerprints_are_split_and_checked() {
        let one = "ABCD-EFGH-IJKL-MNOP";
        assert_eq!(fingerprints(one).unwrap(), vec![one.to_string()]);
        assert_eq!(
            fingerprints("abcd efgh ijkl mnop").unwrap(),
            vec![one.to_string()]
        );
        assert_eq!(
            fingerprints("ABCD-EFGH-IJKL-MNOP QRST-UVWX-YZ23-4567, ABCDEFGHIJKLMNOP")
                .unwrap()
                .len(),
            3
        );
        for bad in [
            "",
            "  ",
            "ABCD-EFGH",
            "ABCD-EFGH-IJKL-MNO1",
            "ÄBCD-EFGH-IJKL-MNOP",
        ] {
            assert!(fingerprints(bad).is_err(), "{bad:?}");
        }
        assert!(fingerprints(&"ABCDEFGHIJKLMNOP".repeat(65)).is_err());
    }
}
