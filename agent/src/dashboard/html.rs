//! HTML for the dashboard: compile-time templates with `{{name}}` slots, filled only with
//! `Html` values. An `Html` is made from static markup or from text through `esc`, the one
//! function that escapes, so nothing a peer sent (a description, a node name) reaches a page
//! unescaped.

/// Markup that is safe to put in a page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Html(String);

/// The only escaping in the dashboard: `& < > " '` become entities (text and attribute values).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

impl Html {
    /// Markup written in this crate.
    pub fn raw(s: &'static str) -> Html {
        Html(s.to_string())
    }

    /// Markup built in this crate from its own tags and numbers, every text in it through
    /// `esc` (the Community map's SVG, `map`).
    pub(crate) fn trusted(s: String) -> Html {
        Html(s)
    }

    pub fn text(s: &str) -> Html {
        Html(esc(s))
    }

    pub fn push(&mut self, s: &'static str) -> &mut Self {
        self.0.push_str(s);
        self
    }

    pub fn text_in(&mut self, s: &str) -> &mut Self {
        self.0.push_str(&esc(s));
        self
    }

    pub fn html(&mut self, h: &Html) -> &mut Self {
        self.0.push_str(&h.0);
        self
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// `text` as a QR code, inline SVG drawn by the `qrcode` crate: its markup is fixed
/// attributes and a path of numbers (the text only sets which modules are dark), so it is safe
/// as is; inline, it needs nothing from the CSP (no `img-src`, no script). Empty for text too
/// long for a QR code.
pub fn qr_svg(text: &str) -> Html {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => Html(
            code.render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .quiet_zone(true)
                .build(),
        ),
        Err(_) => Html::default(),
    }
}

/// Fills a template's `{{name}}` slots; a slot without a value stays empty.
pub fn render(template: &'static str, slots: &[(&str, Html)]) -> Html {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let name = &after[..j];
        if let Some((_, v)) = slots.iter().find(|(k, _)| *k == name) {
            out.push_str(&v.0);
        }
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    Html(out)
}

pub const LAYOUT: &str = include_str!("templates/layout.html");
pub const LOGIN: &str = include_str!("templates/login.html");
pub const SERVICES: &str = include_str!("templates/services.html");
pub const NODE: &str = include_str!("templates/node.html");
pub const MESSAGE: &str = include_str!("templates/message.html");
pub const INVITE: &str = include_str!("templates/invite.html");
pub const COMMUNITY: &str = include_str!("templates/community.html");
pub const COMMUNITY_NODE: &str = include_str!("templates/community_node.html");
pub const SETUP: &str = include_str!("templates/setup.html");
pub const UPDATES: &str = include_str!("templates/updates.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_slots_filled() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        let h = render(
            "<p>{{a}}</p><i>{{b}}</i>{{missing}}",
            &[("a", Html::text("<b>")), ("b", Html::raw("<br>"))],
        );
        assert_eq!(h.into_string(), "<p>&lt;b&gt;</p><i><br></i>");
        for t in [
            LAYOUT,
            LOGIN,
            SERVICES,
            NODE,
            MESSAGE,
            COMMUNITY,
            COMMUNITY_NODE,
            SETUP,
        ] {
            assert!(!t.contains("<script"), "templates carry no script");
        }
    }
}
