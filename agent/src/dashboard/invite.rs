//! The Invite tab: make an invitation (shown once, as text, as a seed snippet and as a QR
//! code), list the outstanding ones and revoke them. Everything goes through the agent's
//! typed control requests; the dashboard never sees the community key.

use axum::extract::State as AxState;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::html::{self, render, Html};
use super::web::{ask, page, state, Shared};
use crate::control::{Reply, Request as Ask, State};

pub(crate) async fn invite_page(AxState(web): AxState<Shared>) -> Response {
    let s = match state(&web).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    show(&web, &s, Html::default()).await
}

async fn show(web: &Shared, s: &State, made: Html) -> Response {
    let list = match ask(web, Ask::Invitations {}).await {
        Ok(Reply::Invitations { list }) => list,
        Ok(_) => Vec::new(),
        Err(r) => return r,
    };
    let mut rows = Html::default();
    for i in &list {
        rows.push("<tr><td>")
            .text_in(&i.id)
            .push("</td><td>")
            .text_in(i.name.as_deref().unwrap_or("any"))
            .push("</td><td>")
            .text_in(&when(i.expires))
            .push("</td><td>")
            .text_in(&i.uses_left.to_string())
            .push("</td><td><form method=\"post\" action=\"/invite/revoke\"><input type=\"hidden\" name=\"id\" value=\"")
            .text_in(&i.id)
            .push("\"><button type=\"submit\">Revoke</button></form></td></tr>");
    }
    let body = render(html::INVITE, &[("made", made), ("list", rows)]);
    page("Invite", s, "/invite", body)
}

/// Unix seconds as UTC `YYYY-MM-DD HH:MM`.
fn when(t: u64) -> String {
    let days = (t / 86400) as i64;
    let secs = t % 86400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteForm {
    #[serde(default)]
    name: String,
    expires: String,
    uses: String,
}

pub(crate) async fn invite_form(
    AxState(web): AxState<Shared>,
    Form(f): Form<InviteForm>,
) -> Response {
    let s = match state(&web).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let made = match make(&web, &f).await {
        Ok(r @ Reply::Invited { .. }) => made(&r),
        Ok(other) => error(&format!("unexpected reply {other:?}")),
        Err(e) => error(&e),
    };
    show(&web, &s, made).await
}

/// A new invitation as the page shows it, once: the token, its QR code and a seed snippet
/// (the Invite tab's, and the setup page's after a community is created).
pub(crate) fn made(r: &Reply) -> Html {
    let Reply::Invited {
        token,
        snippet,
        id,
        expires,
    } = r
    else {
        return Html::default();
    };
    let mut h = Html::default();
    h.push("<div class=\"msg\" id=\"made\"><p>Invitation ")
        .text_in(id)
        .push(", valid until ")
        .text_in(&when(*expires))
        .push(". Shown only now:</p><p><code id=\"token\">")
        .text_in(token)
        .push("</code></p><div id=\"qr\">")
        .html(&html::qr_svg(token))
        .push("</div><p>As a seed snippet:</p><pre id=\"snippet\">")
        .text_in(snippet)
        .push("</pre></div>");
    h
}

async fn make(web: &Shared, f: &InviteForm) -> Result<Reply, String> {
    let expires_s = crate::mesh::invite::parse_duration(&f.expires)?.as_secs();
    let uses: u32 = f
        .uses
        .trim()
        .parse()
        .map_err(|_| format!("uses: {:?} is not a number", f.uses))?;
    let name = Some(f.name.trim().to_string()).filter(|n| !n.is_empty());
    let req = Ask::Invite {
        name,
        expires_s,
        uses,
    };
    req.check()?;
    match crate::control::call(&web.control, &req).await {
        Ok(Reply::Error { message }) => Err(message),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

fn error(message: &str) -> Html {
    let mut h = Html::default();
    h.push("<div class=\"msg err\" id=\"message\">")
        .text_in(message)
        .push("</div>");
    h
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeForm {
    id: String,
}

pub(crate) async fn revoke_form(
    AxState(web): AxState<Shared>,
    Form(f): Form<RevokeForm>,
) -> Response {
    let s = match state(&web).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let req = Ask::Revoke { id: f.id.clone() };
    let said = match req.check() {
        Err(e) => error(&e),
        Ok(()) => match crate::control::call(&web.control, &req).await {
            Ok(Reply::Revoked { found: true }) => {
                let mut h = Html::default();
                h.push("<div class=\"msg\" id=\"message\">Revoked ")
                    .text_in(&f.id)
                    .push(".</div>");
                h
            }
            Ok(Reply::Revoked { found: false }) => error("no such invitation"),
            Ok(Reply::Error { message }) => error(&message),
            Ok(other) => error(&format!("unexpected reply {other:?}")),
            Err(e) => error(&e.to_string()),
        },
    };
    show(&web, &s, said).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(when(0), "1970-01-01 00:00 UTC");
        assert_eq!(when(1_795_910_400), "2026-11-29 00:00 UTC");
    }

    #[test]
    fn the_qr_code_is_inline_svg_without_script() {
        let svg = html::qr_svg("cloudy1:AAAAAAAAAAAAAAAAAAAAAA@10.0.0.1:6655").into_string();
        assert!(svg.contains("<svg") && svg.contains("<path"), "{svg}");
        assert!(!svg.contains("script") && !svg.contains("href"), "{svg}");
    }
}
