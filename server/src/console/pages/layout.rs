//! The frame of every page: head (the one stylesheet), navigation, the
//! logout form, the content; and the small pieces pages share (CSRF field,
//! tables, figures). maud escapes every text it writes.

use crate::console::auth::OperatorSession;
use actix_web::HttpResponse;
use maud::{html, Markup, DOCTYPE};

/// The pages of the navigation: (path, title).
const NAV: &[(&str, &str)] = &[
    ("/console/", "Overview"),
    ("/console/graph", "Graph"),
    ("/console/principals", "Principals"),
    ("/console/jobs", "Jobs"),
    ("/console/audiences", "Audiences"),
    ("/console/quality", "Data quality"),
    ("/console/privacy", "Privacy"),
    ("/console/audit", "Audit log"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · onboard console" }
            link rel="stylesheet" href="/console/style.css";
        }
    }
}

/// The hidden field every form of a session carries.
pub fn csrf(op: &OperatorSession) -> Markup {
    html! { input type="hidden" name="csrf" value=(op.csrf); }
}

/// A whole page for a logged-in operator.
pub fn page(op: &OperatorSession, path: &str, title: &str, content: Markup) -> HttpResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    span.brand { "onboard console" }
                    nav {
                        @for (href, name) in NAV {
                            @if *href == path {
                                a.active href=(href) { (name) }
                            } @else {
                                a href=(href) { (name) }
                            }
                        }
                    }
                    form.logout method="post" action="/console/logout" {
                        (csrf(op))
                        span.who { "operator " strong { (op.name) } }
                        button type="submit" { "Log out" }
                    }
                }
                main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    };
    html_response(markup)
}

/// A page outside a session (login, errors).
pub fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main.narrow {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// An error page: the status and a message that holds no detail of the failure.
pub fn error_page(status: u16, message: &str) -> Markup {
    bare(
        &format!("Error {status}"),
        html! {
            p.error { (message) }
            p { a href="/console/" { "Back to the console" } }
        },
    )
}

/// `200 text/html`.
pub fn html_response(markup: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// A row of figures: (label, value).
pub fn figures(items: &[(&str, String)]) -> Markup {
    html! {
        div.figures {
            @for (label, value) in items {
                div.figure { span.value { (value) } span.label { (label) } }
            }
        }
    }
}

/// A status as a coloured badge.
pub fn badge(status: &str) -> Markup {
    let class = match status {
        "finished" | "delivered" | "committed" | "ok" => "badge good",
        "failed" | "withheld" | "abandoned" | "refused" => "badge bad",
        _ => "badge",
    };
    html! { span class=(class) { (status) } }
}

/// A notice shown once after an action (e.g. a new key).
pub fn notice(text: Markup) -> Markup {
    html! { div.notice { (text) } }
}
