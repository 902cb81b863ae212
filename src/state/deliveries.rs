//! Dead and pending deliveries as operators see them: listed by subscriber, event type,
//! key and time, shown one at a time with their body, and dead ones replayed (moved
//! back into their subscriber's spill log with the same id, position and body).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use tokio_postgres::types::ToSql;

use super::{State, StateError};

/// Which deliveries an operator asks for. Times are RFC 3339.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub subscriber: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub key: Option<String>,
    pub id: Option<String>,
    /// Died (dead) or spilled (pending) at or after this time.
    pub since: Option<String>,
    /// ... and before this one.
    pub until: Option<String>,
}

/// The longest filter value taken, in bytes: far above any name, id or key walhook
/// makes, and it keeps a request from sending megabytes into a query.
pub const MAX_FILTER_BYTES: usize = 8 * 1024;

/// A problem with text an operator sent (`what` names it) that goes into a query or a
/// stored row: a NUL byte (PostgreSQL text cannot hold one), or more than `max` bytes.
pub fn check_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.contains('\0') {
        return Err(format!(
            "{what} holds a NUL byte (\\0), which PostgreSQL text cannot hold: remove it"
        ));
    }
    if text.len() > max {
        return Err(format!(
            "{what} is {} bytes long; at most {max} are taken",
            text.len()
        ));
    }
    Ok(())
}

/// Which page of a list: at most `limit` rows after the first `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Filter {
    /// The first problem with the filter's values, if any.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("subscriber", &self.subscriber),
            ("type", &self.event_type),
            ("key", &self.key),
            ("id", &self.id),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = value {
                check_text(name, v, MAX_FILTER_BYTES)?;
            }
        }
        for (name, t) in [("since", &self.since), ("until", &self.until)] {
            if let Some(t) = t {
                humantime::parse_rfc3339_weak(t).map_err(|e| {
                    format!("{name}: {t:?} is not a time ({e}); write it like 2026-11-23T10:00:00Z")
                })?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Gave up: in `walhook.dead_letters`.
    #[default]
    Dead,
    /// In the spill log, waiting for an attempt (`walhook.spill`; events spilled in
    /// chunks are not listed one by one).
    Pending,
}

/// One delivery as listed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Delivery {
    pub status: Status,
    pub subscriber: String,
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub key: String,
    pub attempts: i32,
    /// The last error (a dead letter's reason).
    pub error: Option<String>,
    /// When it died, or when it was spilled.
    pub at: String,
    /// A pending delivery's next attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The standard body, when shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Its last failed attempts, oldest first (`at`, `status`, `ms`, `error`), when shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Value>,
}

const UTC: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";
/// The filter's conditions on subscriber ($2), type ($3), key ($4) and id ($5).
const FILTER: &str = "($2::text IS NULL OR subscriber = $2)
    AND ($3::text IS NULL OR event_type = $3) AND ($4::text IS NULL OR ordering_key = $4)
    AND ($5::text IS NULL OR event_id = $5)";

impl State {
    /// How many deliveries match `filter`.
    pub async fn count_deliveries(&self, status: Status, filter: &Filter) -> Result<i64, StateError> {
        let (table, at) = match status {
            Status::Dead => ("dead_letters", "died_at"),
            Status::Pending => ("spill", "spilled_at"),
        };
        let sql = format!("SELECT count(*) FROM walhook.{table} WHERE {}", matching(at));
        let params = Params::new(&self.slot, filter.subscriber.as_deref(), filter);
        let row = self.client().await?.query_one(&sql, &params.list()).await?;
        Ok(row.get(0))
    }

    /// Per subscriber: events in its spill log (rows and chunks), and its dead letters.
    pub async fn backlogs(&self) -> Result<std::collections::HashMap<String, (i64, i64)>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT subscriber, coalesce(sum(n) FILTER (WHERE dead = false), 0)::int8,
                        coalesce(sum(n) FILTER (WHERE dead), 0)::int8
                 FROM (SELECT subscriber, false AS dead, count(*) AS n FROM walhook.spill
                       WHERE slot = $1 GROUP BY 1
                       UNION ALL
                       SELECT subscriber, false, sum(coalesce(events, cardinality(lsns))) FROM walhook.spill_chunks
                       WHERE slot = $1 GROUP BY 1
                       UNION ALL
                       SELECT subscriber, true, count(*) FROM walhook.dead_letters
                       WHERE slot = $1 GROUP BY 1) AS counts
                 GROUP BY subscriber",
                &[&self.slot],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect())
    }

    /// Deliveries matching `filter`, newest first, one `page` of them; with `body`, each
    /// with its standard body.
    pub async fn deliveries(
        &self,
        status: Status,
        filter: &Filter,
        page: Page,
        body: bool,
    ) -> Result<Vec<Delivery>, StateError> {
        // The two tables differ in where the error, the time and the next attempt are.
        let (table, error, at, next) = match status {
            Status::Dead => ("dead_letters", "reason", "died_at", "NULL::timestamptz"),
            Status::Pending => ("spill", "last_error", "spilled_at", "next_attempt_at"),
        };
        let sql = format!(
            "SELECT subscriber, event_id, event_type, ordering_key, attempts, {error},
                    to_char({at} AT TIME ZONE 'UTC', {UTC}), to_char({next} AT TIME ZONE 'UTC', {UTC}),
                    CASE WHEN $9 THEN body END, CASE WHEN $9 THEN history::text END
             FROM walhook.{table}
             WHERE {}
             ORDER BY {at} DESC, lsn DESC, seq DESC LIMIT $8 OFFSET $10",
            matching(at)
        );
        let params = Params::new(&self.slot, filter.subscriber.as_deref(), filter);
        let mut list = params.list().to_vec();
        list.extend([&page.limit as &(dyn ToSql + Sync), &body, &page.offset]);
        let rows = self.client().await?.query(&sql, &list).await?;
        Ok(rows
            .into_iter()
            .map(|r| Delivery {
                status,
                subscriber: r.get(0),
                id: r.get(1),
                event_type: r.get(2),
                key: r.get(3),
                attempts: r.get(4),
                error: r.get(5),
                at: r.get(6),
                next_attempt_at: r.get(7),
                body: r.get::<_, Option<Vec<u8>>>(8).map(|b| {
                    // Bodies may hold json nested past serde_json's limit (kept as text).
                    std::str::from_utf8(&b)
                        .ok()
                        .and_then(|text| crate::decode::json::parse_bounded(text, 64))
                        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&b).into_owned()))
                }),
                history: r
                    .get::<_, Option<String>>(9)
                    .and_then(|h| serde_json::from_str(&h).ok()),
            })
            .collect())
    }

    /// Moves the dead letters of `subscriber` that match `filter` back into its spill
    /// log, with their ids, positions and bodies and no attempts. Returns their ids.
    pub async fn replay_dead(&self, subscriber: &str, filter: &Filter) -> Result<Vec<String>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                // Inserted first, and only what was inserted leaves the dead letters: an
                // event already in the log (the same position) keeps its dead letter.
                &format!(
                    "WITH picked AS (
                   SELECT lsn, seq, event_id, event_type, ordering_key, body, history, prev_key FROM walhook.dead_letters
                   WHERE {} FOR UPDATE),
                 moved AS (
                   INSERT INTO walhook.spill
                     (slot, subscriber, lsn, seq, event_id, event_type, ordering_key, body, history, prev_key)
                   SELECT $1, $2, lsn, seq, event_id, event_type, ordering_key, body, history, prev_key FROM picked
                   ON CONFLICT DO NOTHING
                   RETURNING lsn, seq, event_id),
                 gone AS (
                   DELETE FROM walhook.dead_letters d USING moved m
                   WHERE d.slot = $1 AND d.subscriber = $2 AND d.lsn = m.lsn AND d.seq = m.seq)
                 SELECT event_id FROM moved ORDER BY lsn, seq",
                    matching("died_at")
                ),
                &Params::new(&self.slot, Some(subscriber), filter).list(),
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }
}

/// An RFC 3339 time (checked by `Filter::check`) as a timestamp parameter.
fn timestamptz(t: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339_weak(t).unwrap_or(std::time::UNIX_EPOCH)
}

/// The conditions of a filter's parameters (`Params`) on a table whose time column is
/// `at`: the slot ($1), `FILTER` ($2 to $5), and the time bounds ($6, $7).
fn matching(at: &str) -> String {
    format!(
        "slot = $1 AND {FILTER}
         AND ($6::timestamptz IS NULL OR {at} >= $6) AND ($7::timestamptz IS NULL OR {at} < $7)"
    )
}

/// A filter's values as the parameters $1 to $7 of `matching`.
struct Params<'a> {
    slot: &'a str,
    subscriber: Option<&'a str>,
    filter: &'a Filter,
    since: Option<std::time::SystemTime>,
    until: Option<std::time::SystemTime>,
}

impl<'a> Params<'a> {
    fn new(slot: &'a str, subscriber: Option<&'a str>, filter: &'a Filter) -> Params<'a> {
        Params {
            slot,
            subscriber,
            filter,
            since: filter.since.as_deref().map(timestamptz),
            until: filter.until.as_deref().map(timestamptz),
        }
    }

    fn list(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.slot,
            &self.subscriber,
            &self.filter.event_type,
            &self.filter.key,
            &self.filter.id,
            &self.since,
            &self.until,
        ]
    }
}

impl State {
    /// Deletes dead letters that died more than `retention` ago, in batches. Returns how
    /// many went.
    pub async fn prune_dead(&self, retention: std::time::Duration) -> Result<u64, StateError> {
        let before = std::time::SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(std::time::UNIX_EPOCH);
        let mut total = 0;
        loop {
            let n = self
                .client()
                .await?
                .execute(
                    "DELETE FROM walhook.dead_letters WHERE ctid IN (
                       SELECT ctid FROM walhook.dead_letters
                       WHERE slot = $1 AND died_at < $2 LIMIT 10000)",
                    &[&self.slot, &before],
                )
                .await?;
            total += n;
            if n < 10_000 {
                return Ok(total);
            }
        }
    }
}
