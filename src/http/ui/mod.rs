//! The browser side: static assets embedded in the binary, and the HTML pages
//! of the original (`GET /q/` queue list, `GET /j/<q>` job view).

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
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
    (
        "index.html",
        "text/html; charset=UTF-8",
        include_str!("index.html"),
    ),
    (
        "help.html",
        "text/html; charset=UTF-8",
        include_str!("help.html"),
    ),
    (
        "restmq.css",
        "text/css; charset=UTF-8",
        include_str!("restmq.css"),
    ),
];

/// `GET /static/<path>`: an embedded asset.
pub async fn asset(Path(path): Path<String>) -> Result<Response, Error> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == path)
        .ok_or(Error::NotFound)?;
    Ok((
        [(CONTENT_TYPE, *content_type), (CACHE_CONTROL, "no-cache")],
        *body,
    )
        .into_response())
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
