//! Backfills, kept in `walhook.backfills`: what an operator asked for, and how far each
//! got. The CLI and the admin API write requests here; the leader's runner takes them up
//! and saves its progress, so a restart or a standby resumes where it stopped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{State, StateError};

/// What a backfill is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Asked for; the leader takes it up in turn.
    Pending,
    Running,
    /// Stopped by an operator until resumed.
    Paused,
    Done,
    Cancelled,
    /// Stopped by an error it cannot get past (`error` says which and how to fix it).
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Done => "done",
            Status::Cancelled => "cancelled",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "running" => Status::Running,
            "paused" => Status::Paused,
            "done" => Status::Done,
            "cancelled" => Status::Cancelled,
            "failed" => Status::Failed,
            _ => Status::Pending,
        }
    }

    /// Whether it is over (it never runs again).
    pub fn ended(self) -> bool {
        matches!(self, Status::Done | Status::Cancelled | Status::Failed)
    }
}

/// How far a backfill got in one table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableProgress {
    /// The last key done, as its columns' text, in key order; none before the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<Option<String>>>,
    /// Rows read (a row read again because a live change touched it counts once).
    #[serde(default)]
    pub rows: i64,
    #[serde(default)]
    pub done: bool,
}

/// A backfill as kept.
#[derive(Debug, Clone, Serialize)]
pub struct Backfill {
    pub id: i64,
    pub subscriber: String,
    pub tables: Vec<String>,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_sql: Option<String>,
    /// Made by the subscriber's `initial_backfill`.
    pub initial: bool,
    pub status: Status,
    pub progress: BTreeMap<String, TableProgress>,
    pub rows_done: i64,
    /// The tables' rows as the planner estimates them, when known.
    pub rows_estimate: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub started_at: Option<String>,
    pub updated_at: String,
    pub finished_at: Option<String>,
    /// Seconds it has been running (from its start to its end, or to now).
    pub seconds: f64,
    /// The document it sends (`--document`), reading the keys of its first source
    /// (`tables`); None for a backfill of rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
}

/// What a new backfill is asked to do.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub subscriber: &'a str,
    pub tables: &'a [String],
    pub where_sql: Option<&'a str>,
    pub initial: bool,
    /// The document it sends, if it is a backfill of one.
    pub document: Option<&'a str>,
}

const COLUMNS: &str = "id, subscriber, tables, where_sql, initial, status, progress::text, rows_done,
     rows_estimate, error,
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
     to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
     to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
     coalesce(extract(epoch FROM coalesce(finished_at, now()) - started_at), 0)::float8, document";

fn from_row(r: &tokio_postgres::Row) -> Backfill {
    let progress: String = r.get(6);
    Backfill {
        id: r.get(0),
        subscriber: r.get(1),
        tables: r.get(2),
        where_sql: r.get(3),
        initial: r.get(4),
        status: Status::parse(r.get(5)),
        progress: serde_json::from_str(&progress).unwrap_or_default(),
        rows_done: r.get(7),
        rows_estimate: r.get(8),
        error: r.get(9),
        created_at: r.get(10),
        started_at: r.get(11),
        updated_at: r.get(12),
        finished_at: r.get(13),
        seconds: r.get(14),
        document: r.get(15),
    }
}

impl State {
    /// Records a new backfill (pending); its id.
    pub async fn create_backfill(&self, req: &Request<'_>) -> Result<i64, StateError> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO walhook.backfills (slot, subscriber, tables, where_sql, initial, document)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &self.slot,
                    &req.subscriber,
                    &req.tables,
                    &req.where_sql,
                    &req.initial,
                    &req.document,
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Every backfill of this slot, newest first.
    pub async fn backfills(&self) -> Result<Vec<Backfill>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {COLUMNS} FROM walhook.backfills WHERE slot = $1 ORDER BY id DESC"),
                &[&self.slot],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    pub async fn backfill(&self, id: i64) -> Result<Option<Backfill>, StateError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {COLUMNS} FROM walhook.backfills WHERE slot = $1 AND id = $2"),
                &[&self.slot, &id],
            )
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// The backfill to run next: the one running (after a restart or a takeover), else
    /// the oldest pending one.
    pub async fn next_backfill(&self) -> Result<Option<Backfill>, StateError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM walhook.backfills
                     WHERE slot = $1 AND status IN ('pending', 'running')
                     ORDER BY status = 'running' DESC, id LIMIT 1"
                ),
                &[&self.slot],
            )
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Whether this subscriber ever had an initial backfill.
    pub async fn had_initial_backfill(&self, subscriber: &str) -> Result<bool, StateError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM walhook.backfills WHERE slot = $1 AND subscriber = $2 AND initial)",
                &[&self.slot, &subscriber],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Moves a backfill to `to` if its status is one of `from`. The backfill as it is
    /// after (None when there is no such backfill); `changed` is false when its status
    /// was not one of `from`.
    pub async fn set_backfill_status(
        &self,
        id: i64,
        from: &[Status],
        to: Status,
    ) -> Result<(Option<Backfill>, bool), StateError> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE walhook.backfills SET status = $3, updated_at = now(),
                        finished_at = CASE WHEN $3 IN ('done', 'cancelled', 'failed') THEN now() END,
                        error = CASE WHEN $3 = 'pending' THEN NULL ELSE error END
                 WHERE slot = $1 AND id = $2 AND status = ANY($4)",
                &[&self.slot, &id, &to.as_str(), &from],
            )
            .await?;
        Ok((self.backfill(id).await?, n == 1))
    }

    /// The runner takes a backfill up: running, with the rows it expects.
    pub async fn start_backfill(&self, id: i64, estimate: Option<i64>) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                "UPDATE walhook.backfills SET status = 'running', rows_estimate = $3,
                        started_at = coalesce(started_at, now()), updated_at = now()
                 WHERE slot = $1 AND id = $2 AND status IN ('pending', 'running')",
                &[&self.slot, &id, &estimate],
            )
            .await?;
        Ok(())
    }

    /// Saves how far a backfill got in `table`, with `rows` more sent. Its status as it is
    /// now (an operator may have paused or cancelled it meanwhile).
    pub async fn save_backfill_progress(
        &self,
        id: i64,
        table: &str,
        progress: &TableProgress,
        rows: i64,
    ) -> Result<Status, StateError> {
        let json = serde_json::to_string(progress).unwrap_or_else(|_| "{}".into());
        let row = self
            .client()
            .await?
            .query_one(
                "UPDATE walhook.backfills
                 SET progress = jsonb_set(progress, ARRAY[$3::text], $4::text::jsonb),
                     rows_done = rows_done + $5, updated_at = now()
                 WHERE slot = $1 AND id = $2 RETURNING status",
                &[&self.slot, &id, &table, &json, &rows],
            )
            .await?;
        Ok(Status::parse(row.get(0)))
    }

    /// Ends a backfill as done, or failed with `error`.
    pub async fn end_backfill(&self, id: i64, error: Option<&str>) -> Result<(), StateError> {
        let status = if error.is_some() { "failed" } else { "done" };
        self.client()
            .await?
            .execute(
                "UPDATE walhook.backfills SET status = $3, error = $4, updated_at = now(), finished_at = now()
                 WHERE slot = $1 AND id = $2 AND status = 'running'",
                &[&self.slot, &id, &status, &error],
            )
            .await?;
        Ok(())
    }
}
