//! What a backfill reads of a table, from the catalog: the columns the stream carries,
//! the key a live change carries, the publication's row filter, and how many rows there
//! are about.

use std::sync::Arc;

use tokio_postgres::Client;

use super::Stop;
use crate::config::TableName;

/// A table as a backfill reads it.
#[derive(Debug, Clone)]
pub(super) struct Table {
    pub name: TableName,
    /// The columns the stream carries for it (name, type oid).
    pub columns: Vec<(Arc<str>, u32)>,
    /// The key columns, with their SQL types (for the keyset's casts).
    pub key: Vec<(Arc<str>, String)>,
    /// The publication's row filter, if any.
    pub row_filter: Option<String>,
}

/// What the catalog says of a table: the columns the stream carries, its key, the
/// publication's row filter.
pub(super) async fn table(c: &Client, t: &TableName, publication: &str) -> Result<Table, Stop> {
    let failed = |e: tokio_postgres::Error| {
        Stop::Failed(format!(
            "cannot read {t} from the catalog: {}",
            crate::pg::describe(&e)
        ))
    };
    let rel = t.quoted();
    let exists: Option<i64> = c
        .query_one("SELECT to_regclass($1)::oid::int8", &[&rel])
        .await
        .map_err(failed)?
        .get(0);
    if exists.is_none() {
        return Err(Stop::Failed(format!("table {t} does not exist")));
    }
    let version: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(failed)?
        .get(0);
    let mut published: Option<Vec<String>> = None;
    let mut row_filter = None;
    if version >= 150000 {
        let row = c
            .query_opt(
                "SELECT attnames::text[], rowfilter FROM pg_publication_tables
                 WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&publication, &t.schema, &t.name],
            )
            .await
            .map_err(failed)?;
        if let Some(row) = row {
            published = row.get(0);
            row_filter = row.get(1);
        }
    }
    let rows = c
        .query(
            "SELECT attname::text, atttypid::int8, attgenerated::text FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&rel],
        )
        .await
        .map_err(failed)?;
    let columns: Vec<(Arc<str>, u32)> = rows
        .iter()
        .filter(|r| match &published {
            Some(names) => names.iter().any(|n| n == r.get::<_, &str>(0)),
            None => r.get::<_, &str>(2).is_empty(),
        })
        .map(|r| (Arc::from(r.get::<_, &str>(0)), r.get::<_, i64>(1) as u32))
        .collect();
    // The key a live change carries: the replica identity index's columns under
    // USING INDEX, else the primary key's.
    let key_rows = c
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_class c JOIN pg_index i ON i.indrelid = c.oid
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             WHERE c.oid = $1::text::regclass
               AND ((c.relreplident = 'i' AND i.indisreplident) OR (c.relreplident <> 'i' AND i.indisprimary))
             ORDER BY k.ord",
            &[&rel],
        )
        .await
        .map_err(failed)?;
    let key: Vec<(Arc<str>, String)> = key_rows
        .iter()
        .map(|r| (Arc::from(r.get::<_, &str>(0)), r.get::<_, String>(1)))
        .collect();
    if key.is_empty() {
        return Err(Stop::Failed(format!(
            "table {t} has no primary key, and a backfill reads in key order: add one \
             (ALTER TABLE {rel} ADD PRIMARY KEY (...)), or leave the table out with --table"
        )));
    }
    if let Some((k, _)) = key.iter().find(|(k, _)| !columns.iter().any(|(c, _)| c == k)) {
        return Err(Stop::Failed(format!(
            "the key column {k:?} of {t} is not published (the publication's column list leaves it out)"
        )));
    }
    Ok(Table {
        name: t.clone(),
        columns,
        key,
        row_filter,
    })
}

/// The rows of `t` as the planner estimates them; counted when it has no estimate yet
/// (a table never analyzed), within 10 s.
pub(super) async fn estimate_rows(c: &Client, t: &TableName) -> i64 {
    let rel = t.quoted();
    let est: Option<f64> = c
        .query_one(
            "SELECT CASE WHEN bool_or(c.reltuples < 0) THEN NULL ELSE sum(c.reltuples)::float8 END
             FROM pg_partition_tree($1::text::regclass) p JOIN pg_class c ON c.oid = p.relid WHERE p.isleaf",
            &[&rel],
        )
        .await
        .ok()
        .and_then(|r| r.get(0));
    if let Some(n) = est {
        return n as i64;
    }
    let count = async {
        c.batch_execute("SET statement_timeout = '10s'").await?;
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {rel}"), &[])
            .await?
            .get(0);
        c.batch_execute("SET statement_timeout = '10min'").await?;
        Ok::<_, tokio_postgres::Error>(n)
    };
    let n = count.await.unwrap_or(0);
    let _ = c.batch_execute("SET statement_timeout = '10min'").await;
    n
}
