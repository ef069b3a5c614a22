//! `restmq stats [queue]`: every queue as a table, or one queue.

use hyper::Uri;
use serde_json::Value;

use super::{CliError, Client, ClientArgs, body_json, body_text, print_line, queue_uri};

/// Options of `restmq stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// One queue to show; without it, every queue.
    pub queue: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The columns of the table of every queue, after its name: the field of
/// `GET /stats/` each shows.
const COUNTS: [&str; 4] = ["consumers", "waiting", "inflight", "delayed"];

/// Prints `GET /stats/` (or `/stats/<queue>`): as the server's JSON with
/// `--json`, else a table of every queue, or one queue's counts.
pub(super) async fn run(args: &StatsArgs) -> Result<(), CliError> {
    let uri = match &args.queue {
        Some(queue) => queue_uri("stats", queue, &[])?,
        None => Uri::from_static("/stats/"),
    };
    let mut client = Client::open(&args.client).await?;
    let body = client.get(&uri).await?;
    if args.client.json {
        return print_line(&body_text(&body));
    }
    let stats = body_json(&body, "stats")?;
    if args.queue.is_some() {
        return print_one(&stats);
    }
    // `/stats/` says `""` both for a stopped queue and for one never started
    // or stopped (which streams): `/control/` tells them apart.
    let control = body_json(
        &client.get(&Uri::from_static("/control/")).await?,
        "control",
    )?;
    let mut rows = vec![
        ["queue", "len", "status", "policy"]
            .into_iter()
            .chain(COUNTS)
            .map(str::to_owned)
            .collect::<Vec<String>>(),
    ];
    let empty = serde_json::Map::new();
    let queues = stats["queues"].as_object().unwrap_or(&empty);
    for (name, queue) in queues {
        let status = match &control["queues"][name]["status"] {
            Value::Number(n) if n.as_u64() == Some(0) => "paused",
            Value::Number(_) | Value::Null => "running",
            _ => "?",
        };
        let policy = match queue["policy"].as_u64() {
            Some(1) => "broadcast",
            Some(2) => "roundrobin",
            // Never set: streams as broadcast.
            _ => "default",
        };
        let mut row = vec![name.clone(), number(&queue["len"])];
        row.extend([status.to_owned(), policy.to_owned()]);
        row.extend(COUNTS.iter().map(|count| number(&queue[*count])));
        rows.push(row);
    }
    if rows.len() == 1 {
        return print_line("no queues");
    }
    for line in table(&rows) {
        print_line(&line)?;
    }
    Ok(())
}

/// One queue's counts, a `name  value` line each, in the server's order.
fn print_one(stats: &Value) -> Result<(), CliError> {
    let fields = ["queue", "len"].into_iter().chain(COUNTS);
    let width = fields.clone().map(str::len).max().unwrap_or(0);
    for field in fields {
        let value = match &stats[field] {
            Value::String(text) => text.clone(),
            other => number(other),
        };
        print_line(&format!("{field:<width$}  {value}"))?;
    }
    Ok(())
}

/// A count as text; `-` when the server did not send it.
fn number(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Rows aligned in columns two spaces apart: the first column (names) to the
/// left, the others (counts and words) to the right, like `ls -l`.
fn table(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (cell, &width))| {
                    if c == 0 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_a_table() {
        let rows = vec![
            vec!["queue".to_owned(), "len".to_owned()],
            vec!["jobs".to_owned(), "12".to_owned()],
            vec!["a-long-name".to_owned(), "3".to_owned()],
        ];
        assert_eq!(
            table(&rows),
            ["queue        len", "jobs          12", "a-long-name    3"]
        );
    }
}
