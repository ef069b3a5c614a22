//! collectd's `write_http` plugin: `POST /collectd/data` (PUTVAL lines or JSON)
//! and `POST /collectd/event` (notifications) into the queues `collectd_data`
//! and `collectd_event`, as the original did.
//!
//! Each POST becomes one message: a JSON array, in the shape collectd's own
//! JSON format has, whichever format collectd sent. A consumer reads the same
//! fields (`host`, `plugin`, `plugin_instance`, `type`, `type_instance`,
//! `time`, `interval`, `values`; for events `severity` and `message` too)
//! whether collectd was set to `Format Command` or `Format JSON`. The original
//! turned PUTVAL lines into objects of its own (`plugin_instance` holding the
//! plugin, `value` the raw text) and notifications into a list of one-key
//! objects; this keeps its queues and content types and gives them a shape
//! collectd documents.

use serde_json::{Map, Number, Value, json};

/// The queue value lists go to.
pub const DATA_QUEUE: &str = "collectd_data";
/// The queue notifications go to.
pub const EVENT_QUEUE: &str = "collectd_event";

/// Why a collectd payload is refused: the line it is on (from 1, 0 for the
/// whole body) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if *.line > 0 { format!("line {line}: ") } else { String::new() })]
pub struct PayloadError {
    /// The line, from 1; 0 when the payload as a whole is wrong.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

fn refuse(line: usize, reason: impl Into<String>) -> PayloadError {
    PayloadError {
        line,
        reason: reason.into(),
    }
}

/// Turns the PUTVAL lines `write_http` sends with `Format Command` into
/// collectd's JSON shape: one object per line, `values` in order (`U`, and
/// `nan`, as `null`). A time of `N` means `now` (seconds since the epoch).
pub fn putval_lines(text: &str, now: f64) -> Result<Value, PayloadError> {
    let mut lists = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        lists.push(putval(line, now).map_err(|reason| refuse(number, reason))?);
    }
    if lists.is_empty() {
        return Err(refuse(0, "no PUTVAL line"));
    }
    Ok(Value::Array(lists))
}

/// One `PUTVAL <identifier> [interval=<seconds>] <time>:<value>[:<value>…]`.
fn putval(line: &str, now: f64) -> Result<Value, String> {
    let mut words = Words(line);
    match words.next()? {
        Some(command) if command.eq_ignore_ascii_case("PUTVAL") => {}
        Some(command) => return Err(format!("expected PUTVAL, found {command:?}")),
        None => return Err("expected PUTVAL".into()),
    }
    let identifier = words.next()?.ok_or("PUTVAL without an identifier")?;
    let mut object = identifier_fields(&identifier)?;
    let mut interval = None;
    let mut values = None;
    while let Some(word) = words.next()? {
        match word.split_once('=') {
            Some((option, value)) => {
                if !option.eq_ignore_ascii_case("interval") {
                    return Err(format!("unknown option {option:?}"));
                }
                let seconds = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("invalid interval {value:?}"))?;
                interval = Some(seconds);
            }
            None if values.is_none() => values = Some(value_list(&word, now)?),
            None => return Err(format!("more than one value list: {word:?}")),
        }
    }
    let (time, values) = values.ok_or("PUTVAL without values")?;
    object.insert("time".into(), float(time));
    object.insert("interval".into(), interval.map_or(Value::Null, float));
    object.insert("values".into(), Value::Array(values));
    Ok(Value::Object(object))
}

/// `host/plugin[-instance]/type[-instance]` as collectd's JSON fields.
fn identifier_fields(identifier: &str) -> Result<Map<String, Value>, String> {
    let mut parts = identifier.split('/');
    let (Some(host), Some(plugin), Some(kind), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "invalid identifier {identifier:?}: expected host/plugin[-instance]/type[-instance]"
        ));
    };
    if host.is_empty() || plugin.is_empty() || kind.is_empty() {
        return Err(format!("invalid identifier {identifier:?}: an empty part"));
    }
    // Plugin and type names hold no dash: the first one starts the instance.
    let split = |name: &str| match name.split_once('-') {
        Some((name, instance)) => (name.to_owned(), instance.to_owned()),
        None => (name.to_owned(), String::new()),
    };
    let (plugin, plugin_instance) = split(plugin);
    let (kind, type_instance) = split(kind);
    let mut object = Map::new();
    object.insert("host".into(), host.into());
    object.insert("plugin".into(), plugin.into());
    object.insert("plugin_instance".into(), plugin_instance.into());
    object.insert("type".into(), kind.into());
    object.insert("type_instance".into(), type_instance.into());
    Ok(object)
}

/// `<time>:<value>[:<value>…]`: the time, and each value as a JSON number
/// (integers kept exact) or `null`.
fn value_list(word: &str, now: f64) -> Result<(f64, Vec<Value>), String> {
    let mut fields = word.split(':');
    let time = match fields.next() {
        Some("N") => now,
        Some(time) => time
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| format!("invalid time {time:?}"))?,
        None => return Err("empty value list".into()),
    };
    let values: Vec<Value> = fields
        .map(|field| reading(field).ok_or_else(|| format!("invalid value {field:?}")))
        .collect::<Result<_, _>>()?;
    if values.is_empty() {
        return Err(format!("no values after the time in {word:?}"));
    }
    Ok((time, values))
}

/// One reading: an integer (counters, derives, absolutes), a float (gauges),
/// or `U` / NaN (no reading), which JSON holds as `null`.
fn reading(text: &str) -> Option<Value> {
    if text == "U" || text.eq_ignore_ascii_case("nan") || text.eq_ignore_ascii_case("-nan") {
        return Some(Value::Null);
    }
    if let Ok(n) = text.parse::<u64>() {
        return Some(n.into());
    }
    if let Ok(n) = text.parse::<i64>() {
        return Some(n.into());
    }
    text.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map(Value::Number)
}

fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// The words of a command line: separated by spaces, a double-quoted word may
/// hold spaces and `\"` (collectd quotes identifiers).
struct Words<'a>(&'a str);

impl Words<'_> {
    fn next(&mut self) -> Result<Option<String>, String> {
        let rest = self.0.trim_start();
        if rest.is_empty() {
            self.0 = rest;
            return Ok(None);
        }
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut word = String::new();
            let mut chars = quoted.char_indices();
            while let Some((at, c)) = chars.next() {
                match c {
                    '"' => {
                        self.0 = &quoted[at + 1..];
                        return Ok(Some(word));
                    }
                    '\\' => match chars.next() {
                        Some((_, escaped)) => word.push(escaped),
                        None => break,
                    },
                    c => word.push(c),
                }
            }
            return Err("a quoted word is not closed".into());
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        self.0 = after;
        Ok(Some(word.to_owned()))
    }
}

/// Checks a `Format JSON` body: an array of value lists (objects), as collectd
/// sends it; it is stored as sent.
pub fn json_data(body: &str) -> Result<(), PayloadError> {
    json_objects(body, &["values"])
}

/// Checks a JSON notification body: an array of notification objects (or
/// one object), each with a `severity` and a `message`; it is stored as sent.
pub fn json_event(body: &str) -> Result<(), PayloadError> {
    json_objects(body, &["severity", "message"])
}

fn json_objects(body: &str, required: &[&str]) -> Result<(), PayloadError> {
    let value: Value =
        serde_json::from_str(body).map_err(|e| refuse(0, format!("invalid JSON: {e}")))?;
    let objects = match &value {
        Value::Array(items) if !items.is_empty() => items.iter().collect::<Vec<_>>(),
        Value::Array(_) => return Err(refuse(0, "an empty JSON array")),
        Value::Object(_) => vec![&value],
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            return Err(refuse(0, "expected a JSON array of objects"));
        }
    };
    for (index, object) in objects.into_iter().enumerate() {
        let Value::Object(fields) = object else {
            return Err(refuse(0, format!("item {index} is not a JSON object")));
        };
        if let Some(missing) = required.iter().find(|key| !fields.contains_key(**key)) {
            return Err(refuse(0, format!("item {index} has no {missing:?}")));
        }
    }
    Ok(())
}

/// Turns a notification in collectd's text form (as `NotificationExec` and
/// the exec plugin write it: `Key: value` header lines, a blank line, the
/// message) into collectd's JSON shape: one object, header names in snake
/// case (`PluginInstance` → `plugin_instance`), `time` a number, and the text
/// after the blank line as `message`.
pub fn notification(text: &str) -> Result<Value, PayloadError> {
    let mut object = Map::new();
    let mut lines = text.lines().enumerate();
    let mut ended = false;
    for (index, line) in lines.by_ref() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            ended = true;
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(refuse(
                index + 1,
                format!("expected a \"Name: value\" header, found {line:?}"),
            ));
        };
        let name = snake_case(name.trim());
        if name.is_empty() {
            return Err(refuse(index + 1, "a header without a name"));
        }
        let value = value.trim();
        let value = match name.as_str() {
            "time" => match value.parse::<f64>().ok().filter(|t| t.is_finite()) {
                Some(time) => float(time),
                None => return Err(refuse(index + 1, format!("invalid time {value:?}"))),
            },
            _ => Value::String(value.to_owned()),
        };
        object.insert(name, value);
    }
    let message: Vec<&str> = lines.map(|(_, line)| line.trim_end_matches('\r')).collect();
    let message = message.join("\n").trim().to_owned();
    if !ended && object.is_empty() {
        return Err(refuse(0, "an empty notification"));
    }
    if !object.contains_key("severity") {
        return Err(refuse(0, "the notification has no Severity header"));
    }
    object.insert("message".into(), message.into());
    Ok(json!([object]))
}

/// `PluginInstance` → `plugin_instance`, `Severity` → `severity`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (index, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if index > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c == '-' || c == ' ' {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn putval_lines_take_collectd_json_shape() {
        let text = "PUTVAL \"web1/df-boot/df_complex-used\" interval=10.000 1288548767:116497408\r\n\
                    PUTVAL web1/cpu-0/cpu-idle 1288548767.5:22.5:U:nan\n";
        let value = putval_lines(text, 0.0).expect("valid");
        assert_eq!(
            value,
            json!([
                {"host": "web1", "plugin": "df", "plugin_instance": "boot",
                 "type": "df_complex", "type_instance": "used",
                 "time": 1288548767.0, "interval": 10.0, "values": [116497408]},
                {"host": "web1", "plugin": "cpu", "plugin_instance": "0",
                 "type": "cpu", "type_instance": "idle",
                 "time": 1288548767.5, "interval": null, "values": [22.5, null, null]},
            ])
        );
    }

    #[test]
    fn putval_now_and_negative_and_huge_readings() {
        let value = putval_lines("PUTVAL h/p/t N:-3:18446744073709551615", 42.0).expect("valid");
        assert_eq!(value[0]["time"], json!(42.0));
        assert_eq!(value[0]["values"], json!([-3, 18446744073709551615u64]));
        assert_eq!(value[0]["plugin_instance"], json!(""));
    }

    #[test]
    fn bad_putval_lines_name_their_line() {
        for (text, line) in [
            ("PUTVAL h/p/t 1:1\nGETVAL h/p/t", 2),
            ("PUTVAL h/p 1:1", 1),
            ("PUTVAL h//t 1:1", 1),
            ("\n\nPUTVAL h/p/t", 3),
            ("PUTVAL h/p/t 1:", 1),
            ("PUTVAL h/p/t x:1", 1),
            ("PUTVAL h/p/t 1:abc", 1),
            ("PUTVAL h/p/t 1:1 2:2", 1),
            ("PUTVAL h/p/t foo=1 1:1", 1),
            ("PUTVAL h/p/t interval=-1 1:1", 1),
            ("PUTVAL \"h/p/t 1:1", 1),
            ("PUTVAL h/p/t inf:1", 1),
        ] {
            let error = putval_lines(text, 0.0).expect_err(text);
            assert_eq!(error.line, line, "{text:?}: {error}");
        }
        assert_eq!(putval_lines("  \n", 0.0).expect_err("empty").line, 0);
    }

    #[test]
    fn notifications_become_one_object() {
        let text = "Severity: WARNING\nTime: 1288548727\nHost: web1\nPlugin: df\n\
                    PluginInstance: boot\nType: df\nDataSource: used\nCurrentValue: 1.164974e+08\n\
                    \nHost web1, plugin df: Data source \"used\" is above the warning threshold.\n";
        let value = notification(text).expect("valid");
        assert_eq!(
            value,
            json!([{
                "severity": "WARNING", "time": 1288548727.0, "host": "web1",
                "plugin": "df", "plugin_instance": "boot", "type": "df",
                "data_source": "used", "current_value": "1.164974e+08",
                "message": "Host web1, plugin df: Data source \"used\" is above the warning threshold.",
            }])
        );
    }

    #[test]
    fn bad_notifications_are_refused() {
        assert_eq!(notification("").expect_err("empty").line, 0);
        assert_eq!(
            notification("Severity: OKAY\nno colon here\n\nmsg")
                .expect_err("bad header")
                .line,
            2
        );
        assert!(notification("Host: a\n\nmsg").is_err(), "no severity");
        assert!(notification("Severity: OKAY\nTime: soon\n\nm").is_err());
    }

    #[test]
    fn json_bodies_are_checked() {
        assert!(json_data(r#"[{"values":[1],"host":"h"}]"#).is_ok());
        assert!(json_data(r#"{"values":[1]}"#).is_ok());
        for bad in ["", "[]", "[1]", r#"[{"host":"h"}]"#, "\"x\"", "{"] {
            assert!(json_data(bad).is_err(), "{bad:?}");
        }
        assert!(json_event(r#"[{"severity":"FAILURE","message":"m"}]"#).is_ok());
        assert!(json_event(r#"[{"severity":"FAILURE"}]"#).is_err());
    }
}
