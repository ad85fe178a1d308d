//! The setup page of a node in no community yet (`daemon::setup`): name the node, create a
//! community, join one with an invitation. Behind the login and the CSRF check like every
//! form; the agent does the work (typed control requests) and says what happened, a refused
//! invitation's reason included. Once the node is a member, `/setup` leads to the dashboard.

use axum::extract::State as AxState;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::html::{self, render, Html};
use super::web::{ask, Shared};
use crate::control::{Reply, Request as Ask, SetupView};

pub(crate) async fn setup_page(AxState(web): AxState<Shared>) -> Response {
    show(&web, Html::default()).await
}

/// The setup page with `message` above the forms; the dashboard once the node is a member.
async fn show(web: &Shared, message: Html) -> Response {
    match ask(web, Ask::State {}).await {
        Ok(Reply::Setup(v)) => page(&v, message),
        Ok(_) => Redirect::to("/services").into_response(),
        Err(r) => r,
    }
}

fn page(v: &SetupView, message: Html) -> Response {
    if let Some(c) = &v.starting {
        let mut body = Html::raw(
            "<h2>Starting</h2><div class=\"msg\" id=\"message\">This node keeps community ",
        );
        body.text_in(c).push(" and is starting in it; this page becomes the dashboard once it runs. If it stays here, <code>cloudy-agent status</code> and the agent's log say why.</div><p><a href=\"/setup\">Reload</a></p>");
        body.html(&message);
        return layout(&v.node, body);
    }
    let (name_off, name_note) = if v.name_from_seed {
        let h = Html::raw("<p class=\"why\" id=\"name-note\">The seed names this node: change <code>[node] name</code> in the seed to rename it.</p>");
        (Html::raw("disabled"), h)
    } else {
        (Html::default(), Html::default())
    };
    let mut address = Html::default();
    if let Some(a) = &v.address {
        address.push(" · address ").text_in(a);
    }
    let body = render(
        html::SETUP,
        &[
            ("message", message),
            ("node", Html::text(&v.node)),
            ("name_off", name_off),
            ("name_note", name_note),
            ("node_id", Html::text(&v.node_id)),
            ("address", address),
        ],
    );
    layout(&v.node, body)
}

fn layout(node: &str, body: Html) -> Response {
    let doc = render(
        html::LAYOUT,
        &[
            ("title", Html::raw("Setup")),
            ("node", Html::text(node)),
            ("community", Html::raw("setup mode: in no community yet")),
            (
                "tabs",
                Html::raw("<a href=\"/setup\" class=\"on\">Setup</a>"),
            ),
            ("body", body),
        ],
    );
    axum::response::Html(doc.into_string()).into_response()
}

fn said(ok: bool, message: &str) -> Html {
    let mut h = Html::raw(if ok {
        "<div class=\"msg\" id=\"message\">"
    } else {
        "<div class=\"msg err\" id=\"message\">"
    });
    h.text_in(message).push("</div>");
    h
}

/// Asks the agent; its refusal (a `Reply::Error`) is the message for the page.
async fn call(web: &Shared, req: Ask) -> Result<Reply, String> {
    req.check()?;
    match crate::control::call(&web.control, &req).await {
        Ok(Reply::Error { message }) => Err(message),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

/// What a setup form's answer shows: the done page once the node is a member, else the setup
/// page with what happened.
async fn answer(web: &Shared, r: Result<Reply, String>) -> Response {
    match r {
        Ok(Reply::SetupDone {
            message,
            community: Some(c),
            invitation,
        }) => {
            // The member's name, as its dashboard's header will show it.
            let node = match ask(web, Ask::State {}).await {
                Ok(Reply::State(s)) => s.node,
                _ => String::new(),
            };
            done(&node, &c, &message, invitation.as_deref())
        }
        Ok(Reply::SetupDone { message, .. }) => show(web, said(true, &message)).await,
        Ok(other) => show(web, said(false, &format!("unexpected reply {other:?}"))).await,
        Err(e) => show(web, said(false, &e)).await,
    }
}

/// The node is a member now: what was done, the invitation for the next node (when the
/// community was created here), and the way into the dashboard (the same session).
fn done(node: &str, community: &str, message: &str, invitation: Option<&Reply>) -> Response {
    let mut body = Html::raw("<h2>Setup done</h2>");
    body.html(&said(true, message));
    if let Some(r) = invitation {
        body.push("<h3>Invite the next node</h3><p>On the next node's setup page, paste this invitation under <b>Join with an invitation</b> (or scan the QR code to copy it). It is valid for one node; the Invite tab makes more.</p>");
        body.html(&super::invite::made(r));
    }
    body.push(
        "<p><a href=\"/services\" id=\"open-dashboard\">Open the dashboard</a> of community ",
    )
    .text_in(community)
    .push("</p>");
    let doc = render(
        html::LAYOUT,
        &[
            ("title", Html::raw("Setup done")),
            ("node", Html::text(node)),
            ("community", Html::text(community)),
            (
                "tabs",
                Html::raw("<a href=\"/services\" class=\"on\">Dashboard</a>"),
            ),
            ("body", body),
        ],
    );
    axum::response::Html(doc.into_string()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameForm {
    name: String,
}

pub(crate) async fn name_form(AxState(web): AxState<Shared>, Form(f): Form<NameForm>) -> Response {
    let req = Ask::SetupName {
        name: f.name.trim().to_string(),
    };
    let r = call(&web, req).await;
    answer(&web, r).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateForm {
    community: String,
}

pub(crate) async fn create_form(
    AxState(web): AxState<Shared>,
    Form(f): Form<CreateForm>,
) -> Response {
    let req = Ask::SetupCreate {
        community: f.community.trim().to_string(),
    };
    let r = call(&web, req).await;
    answer(&web, r).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JoinForm {
    token: String,
}

pub(crate) async fn join_form(AxState(web): AxState<Shared>, Form(f): Form<JoinForm>) -> Response {
    // Whitespace and line breaks picked up when copying are not part of a token.
    let token: String = f.token.split_whitespace().collect();
    let r = call(&web, Ask::SetupJoin { token }).await;
    answer(&web, r).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node name from the agent is text on the page, never markup, and the setup page has
    /// its three forms.
    #[test]
    fn the_setup_page_escapes_and_has_three_forms() {
        let v = SetupView {
            node: "<script>x</script>".into(),
            node_id: "0".repeat(32),
            name_from_seed: true,
            address: Some("10.0.0.5".into()),
            starting: None,
        };
        let r = page(&v, said(false, "\"<b>refused</b>"));
        let body =
            futures_util::FutureExt::now_or_never(axum::body::to_bytes(r.into_body(), 1 << 20))
                .unwrap()
                .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(!text.contains("<script>x"), "{text}");
        assert!(!text.contains("<b>refused"), "{text}");
        for action in ["/setup/name", "/setup/create", "/setup/join"] {
            assert!(text.contains(&format!("action=\"{action}\"")), "{action}");
        }
        assert!(text.contains("id=\"name-note\"") && text.contains("disabled"));
        assert!(text.contains("address 10.0.0.5"));
    }
}
