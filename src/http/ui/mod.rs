//! The browser side: the dashboard (`/ui`, `/static/index.html`) and the other
//! static assets, embedded in the binary, and the HTML pages of the original
//! (`GET /q/` queue list, `GET /j/<q>` job view).

use axum::extract::Path;
use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY as CONTENT_SECURITY_POLICY_HEADER, CONTENT_TYPE,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use super::answer::escape_html;
use crate::broker::QueueName;
use crate::error::Error;
use crate::store::{Message, QueueInfo};

/// Messages listed by the job view.
pub const JOB_VIEW_ITEMS: usize = 10;

/// Files served under `/static/`: (path, content type, content).
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", HTML, DASHBOARD),
    (
        "dashboard.js",
        "text/javascript; charset=UTF-8",
        include_str!("dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=UTF-8",
        include_str!("dashboard.css"),
    ),
    ("favicon.svg", "image/svg+xml", include_str!("favicon.svg")),
    ("help.html", HTML, include_str!("help.html")),
    (
        "restmq.css",
        "text/css; charset=UTF-8",
        include_str!("restmq.css"),
    ),
];

const HTML: &str = "text/html; charset=UTF-8";

/// The dashboard page, at `/static/index.html` and `/ui`.
const DASHBOARD: &str = include_str!("index.html");

/// What the dashboard may load: only this server's own scripts, styles, images
/// and requests (no inline script, nothing from elsewhere), and no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// An embedded file with its type; `page` (the dashboard) also gets its
/// content security policy.
fn embedded(content_type: &'static str, body: &'static str, page: bool) -> Response {
    let mut response = (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-cache"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response();
    if page {
        response.headers_mut().insert(
            CONTENT_SECURITY_POLICY_HEADER,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
    }
    response
}

/// `GET /static/<path>`: an embedded asset.
pub async fn asset(Path(path): Path<String>) -> Result<Response, Error> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == path)
        .ok_or(Error::NotFound)?;
    Ok(embedded(content_type, body, path == "index.html"))
}

/// `GET /ui`: the dashboard, the same page as `/static/index.html`.
pub async fn dashboard() -> Response {
    embedded(HTML, DASHBOARD, true)
}

/// Characters escaped in a queue name placed in a link's path.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\'')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <link rel=\"stylesheet\" href=\"/static/restmq.css\">\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape_html(title)
    )
}

/// The original's queue list: one link `href="/<route>/<q>"` per queue.
pub fn queue_list_page(route: &str, names: &[&str]) -> String {
    let mut body = format!("<h1>queues ({})</h1>\n<ul>\n", names.len());
    for name in names {
        let href = escape_html(&format!("/{route}/{}", utf8_percent_encode(name, PATH)));
        let text = escape_html(&format!("/{route}/{name}"));
        body.push_str(&format!("<li><a href=\"{href}\">{text}</a></li>\n"));
    }
    body.push_str("</ul>\n");
    page(&format!("available queues for /{route}/"), &body)
}

/// The job view: counts and the newest waiting messages of a queue.
pub fn job_page(queue: &QueueName, info: &QueueInfo, latest: &[Message]) -> String {
    let name = escape_html(queue.as_str());
    let mut body = format!(
        "<h1>jobs in queue {name}</h1>\n<dl>\n<dt>queue name</dt><dd>{name}</dd>\n\
         <dt>waiting</dt><dd id=\"len\">{}</dd>\n<dt>published</dt><dd id=\"published\">{}</dd>\n</dl>\n\
         <h2>latest {} jobs</h2>\n<ul id=\"jobs\">\n",
        info.len,
        info.last_id,
        latest.len()
    );
    for message in latest {
        body.push_str(&format!(
            "<li><code>{}</code> {}</li>\n",
            escape_html(&queue.key(message.id)),
            escape_html(&message.value)
        ));
    }
    body.push_str("</ul>\n");
    page(&format!("jobs in queue {}", queue.as_str()), &body)
}
