//! `walhook explain` (a dry run: which events one change makes and the exact request
//! each subscriber would get) and `walhook ping` (one signed `walhook.ping` to one
//! subscriber, to test a receiver before going live).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::SystemTime;

use crate::app::run::RunError;
use crate::config::{Config, Numbers, Op, TableName};
use crate::lanes::deliver::{unix_now, Attempt, Target};
use crate::lanes::target;
use crate::mapping::{Change, ColValue, Mapper, Row, TableMeta, TxMeta};
use crate::pg::connect_message;
use crate::pg::PgTarget;

/// What `walhook explain` is asked about.
pub struct Question<'a> {
    pub table: &'a str,
    pub op: &'a str,
    pub old: Option<&'a str>,
    pub new: Option<&'a str>,
}

/// The report `walhook explain` prints: for each event the change makes, each routed
/// subscriber's request, byte for byte (request line, headers, body).
pub async fn explain(config: &Config, q: &Question<'_>) -> Result<String, RunError> {
    let bad = |m: String| RunError::Config(m);
    let table = TableName::parse(q.table).map_err(|e| bad(format!("--table: {e}")))?;
    let op = match q.op {
        "insert" => Op::Insert,
        "update" => Op::Update,
        "delete" => Op::Delete,
        "truncate" => Op::Truncate,
        other => {
            return Err(bad(format!(
                "--op {other:?}: use insert, update, delete or truncate"
            )))
        }
    };
    // Only this table's rules, in their order: ids and positions come out as in `run`.
    // `numbered[j]` is the config's own number of the j-th of them, for messages.
    let mut scoped = config.clone();
    let numbered: Vec<usize> = (0..config.events.len())
        .filter(|&i| TableName::parse(&config.events[i].table).is_ok_and(|t| t == table))
        .collect();
    scoped
        .events
        .retain(|r| TableName::parse(&r.table).is_ok_and(|t| t == table));
    if scoped.events.is_empty() {
        let named: Vec<&str> = config.events.iter().map(|r| r.table.as_str()).collect();
        return Err(bad(format!(
            "no [[events]] rule names table {table} (rules name: {})",
            named.join(", ")
        )));
    }
    let mut new = q.new.map(|j| row("--new", j)).transpose().map_err(bad)?;
    let mut old = q.old.map(|j| row("--old", j)).transpose().map_err(bad)?;
    let needs_new = matches!(op, Op::Insert | Op::Update);
    if needs_new && new.is_none() {
        return Err(bad(format!("--op {}: give the new row as --new JSON", q.op)));
    }
    if op == Op::Delete && old.is_none() {
        return Err(bad("--op delete: give the deleted row as --old JSON".into()));
    }

    // Rules without `key` use the primary key (or the replica identity index), and subscribers with `numbers = "string"`
    // need the int8 and numeric columns: both read from the source's catalog.
    let mut tables = HashMap::new();
    let mut exact = Vec::new();
    let mut json = Vec::new();
    let wants_key = scoped.events.iter().any(|r| r.key.is_none());
    let wants_types = config.subscribers.iter().any(|s| s.numbers == Numbers::String);
    if wants_key || wants_types {
        let catalog = catalog(config).await?;
        if wants_key {
            let default_key =
                catalog_column_names(&catalog, crate::source::inspect::DEFAULT_KEY, &table).await?;
            tables.insert(
                table.clone(),
                TableMeta {
                    default_key,
                    ..TableMeta::default()
                },
            );
        }
        if wants_types {
            (exact, json) = number_columns(&catalog, &table).await?;
        }
    }
    let mapper = Mapper::new(&scoped, &tables).map_err(|problems| {
        RunError::Compile(
            problems
                .into_iter()
                .map(|p| {
                    crate::config::Problem::new(renumber(&p.path, &numbered), renumber(&p.message, &numbered))
                })
                .collect(),
        )
    })?;
    // Columns the rules name that a row leaves out count as null, as PostgreSQL would
    // send a NULL column; the report says which.
    let mut defaulted = Vec::new();
    for (flag, row) in [("--new", new.as_mut()), ("--old", old.as_mut())] {
        let Some(row) = row else { continue };
        let mut left_out = Vec::new();
        for col in named_columns(&scoped) {
            if !row.iter().any(|(c, _)| **c == *col) {
                row.push((Arc::from(col.as_str()), ColValue::Value(serde_json::Value::Null)));
                left_out.push(col);
            }
        }
        if !left_out.is_empty() {
            defaulted.push(format!("{flag} {}", left_out.join(", ")));
        }
    }
    let tx = TxMeta {
        commit_lsn: 0,
        xid: 0,
        commit_time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        backfill: 0,
    };
    let change = Change {
        table: &table,
        op,
        new,
        old,
        old_is_key_only: false,
        index: 0,
        exact: &exact,
        json: &json,
    };
    let mut failures = Vec::new();
    let events = mapper.map(&tx, &change, &mut failures);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{op} on {table}: {} event(s). Ids, LSNs and times of a real change differ.",
        events.len(),
        op = q.op
    );
    if !defaulted.is_empty() {
        let _ = writeln!(
            out,
            "Note: columns the rules name but the rows leave out count as null: {}.",
            defaulted.join("; ")
        );
    }
    for f in &failures {
        let _ = writeln!(
            out,
            "\n{} could not be evaluated: {}",
            renumber(&f.rule, &numbered),
            f.error
        );
    }
    let ts = unix_now();
    for crate::mapping::Routed {
        event,
        routes,
        numbers,
        coalesce,
    } in &events
    {
        // A coalescing rule's event as a window of this one change would send it.
        let event = match coalesce {
            Some(spec) => {
                let mut c = crate::mapping::coalesce::Coalescer::default();
                c.add(event.clone(), routes.clone(), *numbers, *spec, 0);
                c.advance(i64::MAX);
                match c.take_closed(0, 0).pop() {
                    Some(closed) => closed.event,
                    None => event.clone(),
                }
            }
            None => event.clone(),
        };
        let _ = writeln!(
            out,
            "\nevent {} ({}), key {}",
            event.event_type, event.id, event.key
        );
        if let Some(spec) = coalesce {
            let _ = writeln!(
                out,
                "  coalesced: changes of this key within {} (at most {} after the first) become one event, \
                 with data.coalesced; shown here as the only change of its window",
                humantime::format_duration(std::time::Duration::from_micros(spec.window as u64)),
                humantime::format_duration(std::time::Duration::from_micros(spec.max_wait as u64)),
            );
        }
        if routes.is_empty() {
            let _ = writeln!(out, "  no subscriber wants it");
        }
        let database = crate::pg::database_name(&config.source.url);
        for &i in routes.iter() {
            let sub = &config.subscribers[i];
            if sub.kind == crate::config::SubscriberKind::Nats {
                let target = crate::lanes::nats::NatsTarget::new(sub, i)
                    .map_err(|problems| bad(crate::config::fmt_problems(&problems)))?;
                let _ = writeln!(
                    out,
                    "\n--> subscriber {:?} at {} (NATS JetStream)",
                    sub.name, sub.url
                );
                match target.subject(&event.id, &event.body) {
                    Ok(subject) => {
                        let _ = writeln!(out, "publish to {subject} with Nats-Msg-Id: {}", event.id);
                        out.push_str(&String::from_utf8_lossy(&event.body));
                    }
                    Err(e) => out.push_str(&format!(
                        "(no message: {e}; the event would be retried, then dead)"
                    )),
                }
                out.push('\n');
                continue;
            }
            let target = Target::new(sub, i, &target_context(config, &database))
                .map_err(|problems| bad(crate::config::fmt_problems(&problems)))?;
            let _ = writeln!(out, "\n--> subscriber {:?} at {}", sub.name, sub.url);
            match target.request(&event.id, &event.body, ts) {
                Ok(request) => out.push_str(&String::from_utf8_lossy(&request).replace("\r\n", "\n")),
                Err(e) => out.push_str(&format!(
                    "(no request: {e}; the event would be retried, then dead)"
                )),
            }
            out.push('\n');
        }
    }
    if events.is_empty() && failures.is_empty() {
        let _ = writeln!(
            out,
            "No rule fires for this change (check on, changed, transition and when)."
        );
    }
    Ok(out)
}

/// `text` with each `events[j]` (the j-th rule of the explained table) written as the
/// config's own number, `events[numbered[j]]`.
/// What a subscriber's target is built with, for `config`.
fn target_context<'a>(config: &'a Config, database: &'a str) -> crate::lanes::deliver::Context<'a> {
    crate::lanes::deliver::Context {
        database,
        delivery: &config.delivery,
        env: &crate::lanes::deliver::process_env,
    }
}

fn renumber(text: &str, numbered: &[usize]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("events[") {
        let (before, after) = rest.split_at(at + "events[".len());
        out.push_str(before);
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        match after[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|j| numbered.get(j))
        {
            Some(i) if after[digits..].starts_with(']') => out.push_str(&i.to_string()),
            _ => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// The columns `config`'s rules name: keys, carried columns, conditions.
fn named_columns(config: &Config) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for r in &config.events {
        let when = r
            .when
            .as_deref()
            .and_then(|w| crate::mapping::Condition::compile(w).ok())
            .map(|c| c.columns());
        for list in [
            r.key.clone(),
            r.columns.clone(),
            r.changed.clone(),
            r.ignore_changes.clone(),
            r.transition.as_ref().map(|t| vec![t.column.clone()]),
            r.soft_delete.clone().map(|c| vec![c]),
            when,
        ]
        .into_iter()
        .flatten()
        {
            for c in list {
                if !cols.contains(&c) {
                    cols.push(c);
                }
            }
        }
    }
    cols
}

/// A row image from a JSON object of column to value, in the object's order.
fn row(flag: &str, json: &str) -> Result<Row, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("{flag} is not valid JSON: {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err(format!(
            "{flag} must be a JSON object of column to value, e.g. '{{\"id\": 1, \"qty\": 0}}'"
        ));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| (Arc::from(k.as_str()), ColValue::Value(v)))
        .collect())
}

async fn catalog(config: &Config) -> Result<tokio_postgres::Client, RunError> {
    let source =
        PgTarget::parse(&config.source.url).map_err(|e| RunError::Config(format!("source.url: {e}")))?;
    source.connect("explain").await.map_err(|e| {
        RunError::Prerequisite(format!(
            "{} (explain reads the table's primary key, and its number columns for numbers = \"string\"; \
             set `key` in its rules and leave numbers at \"exact\" to explain without a database)",
            connect_message("source.url", &e)
        ))
    })
}

/// The columns of table ($1, $2) and their type OIDs.
const COLUMN_TYPES: &str = "SELECT a.attname::text, a.atttypid FROM pg_attribute a
     JOIN pg_class c ON c.oid = a.attrelid
     JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attnum";

/// The int8/numeric columns and the json/jsonb columns of `table` (also through domains
/// and arrays), with the types looked up as the pipeline looks them up.
async fn number_columns(
    client: &tokio_postgres::Client,
    table: &TableName,
) -> Result<(Vec<Arc<str>>, Vec<Arc<str>>), RunError> {
    let rows = client
        .query(COLUMN_TYPES, &[&table.schema, &table.name])
        .await
        .map_err(|e| RunError::Catalog(e.into()))?;
    let columns: Vec<(String, u32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut types = crate::decode::TypeRegistry::with_builtins();
    let oids: Vec<u32> = columns.iter().map(|(_, oid)| *oid).collect();
    crate::source::setup::load_types(client, &mut types, Some(&oids))
        .await
        .map_err(|e| match e {
            crate::source::setup::SetupError::Query(pg) => RunError::Catalog(pg),
            other => other.into(),
        })?;
    let named = |keep: &dyn Fn(u32) -> bool| {
        columns
            .iter()
            .filter(|(_, oid)| keep(*oid))
            .map(|(name, _)| Arc::from(name.as_str()))
            .collect()
    };
    Ok((
        named(&|oid| types.is_exact(oid)),
        named(&|oid| types.is_json(oid)),
    ))
}

async fn catalog_column_names(
    client: &tokio_postgres::Client,
    query: &str,
    table: &TableName,
) -> Result<Vec<String>, RunError> {
    let rows = client
        .query(query, &[&table.schema, &table.name])
        .await
        .map_err(|e| RunError::Catalog(e.into()))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Sends one signed `walhook.ping` event to subscriber `name`. Returns the report and
/// whether it was delivered (a 2xx answer).
///
/// With `publish` false (`walhook check --ping`), a NATS subscriber is only asked whether
/// a stream captures the ping's subject: a check must not write into a production stream.
pub async fn ping(config: &Config, name: &str, publish: bool) -> Result<(String, bool), RunError> {
    let Some((i, sub)) = config
        .subscribers
        .iter()
        .enumerate()
        .find(|(_, s)| s.name == name)
    else {
        let names: Vec<&str> = config.subscribers.iter().map(|s| s.name.as_str()).collect();
        return Err(RunError::Config(format!(
            "--subscriber {name:?}: no such subscriber (the config has: {})",
            names.join(", ")
        )));
    };
    let mut one = config.clone();
    one.subscribers = vec![sub.clone()];
    let problems = target::check_targets(&one).await.all();
    if !problems.is_empty() {
        return Err(RunError::Config(
            crate::config::fmt_problems(&problems).replace("subscribers[0]", &format!("subscribers[{i}]")),
        ));
    }
    let (id, body) = ping_event(&sub.name);
    if sub.kind == crate::config::SubscriberKind::Nats && !publish {
        let nats = crate::lanes::nats::NatsTarget::new(sub, i).map_err(RunError::Compile)?;
        return Ok(match nats.probe(&id, body.as_bytes()).await {
            Ok(said) => (format!("{name} ({}): {said}; nothing published", sub.url), true),
            Err(why) => (format!("{name} ({}): {why}", sub.url), false),
        });
    }
    let database = crate::pg::database_name(&config.source.url);
    let target: Box<dyn crate::lanes::store::Sender> = match sub.kind {
        crate::config::SubscriberKind::Http => {
            Box::new(Target::new(sub, i, &target_context(config, &database)).map_err(RunError::Compile)?)
        }
        crate::config::SubscriberKind::Nats => {
            Box::new(crate::lanes::nats::NatsTarget::new(sub, i).map_err(RunError::Compile)?)
        }
    };
    let (outcome, took) = target.send(&id, body.as_bytes()).await;
    let ms = took.as_secs_f64() * 1000.0;
    Ok(match outcome {
        Attempt::Delivered => (
            format!(
                "{name} ({}): delivered {id} in {ms:.1} ms (a 2xx answer, or the stream's ack)",
                sub.url
            ),
            true,
        ),
        Attempt::Failed(failure) => (
            format!(
                "{name} ({}): not delivered after {ms:.1} ms: {}",
                sub.url, failure.error
            ),
            false,
        ),
    })
}

/// A ping's id and body.
fn ping_event(subscriber: &str) -> (String, String) {
    let now = SystemTime::now();
    let micros = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let body = serde_json::json!({
        "type": "walhook.ping",
        "timestamp": humantime::format_rfc3339_micros(now).to_string(),
        "data": {"subscriber": subscriber},
    });
    (format!("ping_{micros:x}"), body.to_string())
}

#[cfg(test)]
mod tests {
    use super::renumber;

    #[test]
    fn rule_numbers_are_the_configs_own() {
        // The explained table's rules are events[1] and events[4] of the config.
        let numbered = [1, 4];
        assert_eq!(renumber("events[0].when: x", &numbered), "events[1].when: x");
        assert_eq!(
            renumber("events[1]: set events[1].key", &numbered),
            "events[4]: set events[4].key"
        );
        assert_eq!(
            renumber("events[7] and events[", &numbered),
            "events[7] and events["
        );
        assert_eq!(renumber("no rule", &numbered), "no rule");
    }
}
