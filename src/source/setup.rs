//! Checks and setup before streaming. Every failure is one [`SetupError`] whose message
//! says what is wrong and the statement or setting that fixes it.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Client;

use crate::config::{quote_ident, Config, Op, TableName};
use crate::decode::{TypeKind, TypeRegistry};
use crate::mapping::{Condition, TableMeta};
use crate::pg::PgError;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Prerequisite(String),
    /// Shown with PostgreSQL's message and SQLSTATE (see `pg::PgError`).
    #[error("catalog query failed: {0}")]
    Query(#[source] PgError),
    /// Creating the publication or slot (or adding a table) found it done already:
    /// another walhook started at the same instant did it between our look and our
    /// statement. Looking again finds it.
    #[error("{0}")]
    Raced(String),
}

impl From<tokio_postgres::Error> for SetupError {
    fn from(e: tokio_postgres::Error) -> Self {
        SetupError::Query(PgError(e))
    }
}

fn need(msg: String) -> SetupError {
    SetupError::Prerequisite(msg)
}

/// A failed create: `Raced` when it failed because the object exists now
/// (duplicate_object, or unique_violation on the catalog's index when two inserted it at
/// once), else a prerequisite error with `msg`.
fn need_unless_raced(e: &tokio_postgres::Error, msg: String) -> SetupError {
    match e.code().map(|c| c.code()) {
        Some(code) if is_raced(code) => SetupError::Raced(msg),
        _ => need(msg),
    }
}

/// SQLSTATEs of a create that lost a race with another creator of the same object:
/// 42710 duplicate_object (the other one committed first: "publication ... already
/// exists", "replication slot ... already exists", "relation ... is already member of
/// publication"), 23505 unique_violation (both inserted the catalog row at once).
fn is_raced(code: &str) -> bool {
    matches!(code, "42710" | "23505")
}

/// What streaming needs to know about the source.
pub struct SourceInfo {
    pub tables: HashMap<TableName, TableMeta>,
    pub types: TypeRegistry,
}

/// Runs every check and creates the publication and slot when allowed.
pub async fn prepare(client: &Client, config: &Config) -> Result<SourceInfo, SetupError> {
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        return Err(need(format!(
            "wal_level is '{wal_level}', but logical replication needs 'logical'. Fix: run \
             ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"
        )));
    }
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (user, can_replicate): (String, bool) = (row.get(0), row.get(1));
    if !can_replicate {
        return Err(need(format!(
            "role {user} may not start replication. Fix: ALTER ROLE {} WITH REPLICATION;",
            quote_ident(&user)
        )));
    }

    // Coalescing windows close on stream time, which walhook writes into the WAL when no
    // transaction carries it (pipeline::ticker).
    if let Some(i) = config.events.iter().position(|r| r.coalesce.is_some()) {
        let may: bool = client
            .query_one(
                // PostgreSQL 17 added a fourth argument (flush).
                "SELECT coalesce(has_function_privilege(coalesce(
                     to_regprocedure('pg_catalog.pg_logical_emit_message(boolean, text, text, boolean)'),
                     to_regprocedure('pg_catalog.pg_logical_emit_message(boolean, text, text)'))::oid, 'EXECUTE'), false)",
                &[],
            )
            .await?
            .get(0);
        if !may {
            return Err(need(format!(
                "events[{i}].coalesce needs role {user} to write stream time into the WAL with \
                 pg_logical_emit_message. Fix: GRANT EXECUTE ON FUNCTION \
                 pg_catalog.pg_logical_emit_message(boolean, text, text) TO {}; \
                 (on PostgreSQL 17 and later: pg_logical_emit_message(boolean, text, text, boolean))",
                quote_ident(&user)
            )));
        }
    }

    // Tables named by rules, with the paths that name them.
    let mut wanted: BTreeMap<TableName, Vec<usize>> = BTreeMap::new();
    for (i, rule) in config.events.iter().enumerate() {
        let t = TableName::parse(&rule.table).map_err(need)?;
        wanted.entry(t).or_default().push(i);
    }
    let mut tables = HashMap::new();
    for (table, rules) in &wanted {
        let first = rules[0];
        let row = client
            .query_opt(
                "SELECT c.oid, c.relreplident::text, c.relkind::text FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.name],
            )
            .await?
            .ok_or_else(|| {
                need(format!(
                    "table {} named in events[{first}].table does not exist in this database \
                     (names are exact and case-sensitive: \"schema.table\")",
                    table.quoted()
                ))
            })?;
        let oid: u32 = row.get(0);
        let replident: String = row.get(1);
        let relkind: String = row.get(2);
        if relkind != "r" && relkind != "p" {
            return Err(need(format!(
                "{} named in events[{first}].table is not a table (relkind '{relkind}'); only tables can be published",
                table.quoted()
            )));
        }
        let pk: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
                 WHERE i.indrelid = $1 AND i.indisprimary
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&oid],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let index_identity: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
                 WHERE i.indrelid = $1 AND i.indisreplident",
                &[&oid],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let columns: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&oid],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for &i in rules {
            let rule = &config.events[i];
            let when = match &rule.when {
                Some(w) => Some(Condition::compile(w).map_err(|e| need(format!("events[{i}].when: {e}")))?),
                None => None,
            };
            let named = [
                ("key", rule.key.clone()),
                ("columns", rule.columns.clone()),
                ("exclude", rule.exclude.clone()),
                ("changed", rule.changed.clone()),
                ("ignore_changes", rule.ignore_changes.clone()),
                (
                    "transition.column",
                    rule.transition.as_ref().map(|t| vec![t.column.clone()]),
                ),
                ("when", when.as_ref().map(Condition::columns)),
            ];
            for (key, list) in &named {
                for col in list.iter().flatten() {
                    if !columns.contains(col) {
                        return Err(need(format!(
                            "events[{i}].{key}: table {} has no column {col:?} (it has: {})",
                            table.quoted(),
                            columns.join(", ")
                        )));
                    }
                }
            }
            let writes = rule.on.iter().any(|op| matches!(op, Op::Update | Op::Delete));
            let no_identity = replident == "n" || (replident == "d" && pk.is_empty());
            if writes && no_identity {
                return Err(need(format!(
                    "table {t} has no replica identity, so PostgreSQL cannot publish its updates and deletes \
                     (events[{i}].on). Fix: ALTER TABLE {t} REPLICA IDENTITY FULL; (or add a primary key)",
                    t = table.quoted()
                )));
            }
            // Keys whose conditions read the old row of updates (or deletes).
            let old_readers = [
                ("changed", rule.changed.is_some()),
                ("ignore_changes", rule.ignore_changes.is_some()),
                (
                    "transition",
                    rule.transition.is_some() && rule.on.contains(&Op::Update),
                ),
                ("when", when.as_ref().is_some_and(|w| w.needs_old()) && writes),
            ];
            if let Some((key, _)) = old_readers.iter().find(|(_, reads)| *reads) {
                if replident != "f" {
                    return Err(need(format!(
                        "events[{i}].{key} needs the old values of every column, but table {t} only logs its key. \
                         Fix: ALTER TABLE {t} REPLICA IDENTITY FULL;",
                        t = table.quoted()
                    )));
                }
            }
            // A delete carries only the identity columns: a key outside them would be null.
            if rule.on.contains(&Op::Delete) && replident != "f" {
                let identity = if replident == "i" { &index_identity } else { &pk };
                if let Some(col) = rule.key.iter().flatten().find(|c| !identity.contains(c)) {
                    return Err(need(format!(
                        "events[{i}].key: column {col:?} is not part of table {t}'s replica identity, so deletes \
                         cannot carry it. Fix: ALTER TABLE {t} REPLICA IDENTITY FULL; or key on identity columns ({})",
                        identity.join(", "),
                        t = table.quoted()
                    )));
                }
            }
        }
        tables.insert(table.clone(), TableMeta { primary_key: pk });
    }

    // Two walhook processes started at once (a first deploy of a leader and a standby)
    // both find the publication, then the slot, missing and both create it: the later
    // one's "already exists" means it is done, so it looks once more and goes on.
    match ensure_publication(client, config, wanted.keys()).await {
        Err(SetupError::Raced(what)) => {
            tracing::info!(%what, "another walhook set the publication up at the same time; looking again");
            ensure_publication(client, config, wanted.keys()).await?;
        }
        done => done?,
    }
    match ensure_slot(client, config).await {
        Err(SetupError::Raced(what)) => {
            tracing::info!(%what, "another walhook created the slot at the same time; looking again");
            ensure_slot(client, config).await?;
        }
        done => done?,
    }
    let mut types = TypeRegistry::with_builtins();
    load_types(client, &mut types, None).await?;
    Ok(SourceInfo { tables, types })
}

async fn ensure_publication<'a>(
    client: &Client,
    config: &Config,
    tables: impl Iterator<Item = &'a TableName>,
) -> Result<(), SetupError> {
    let publication = &config.source.publication;
    let tables: Vec<&TableName> = tables.collect();
    let list = tables.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    let exists = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await?;
    let Some(row) = exists else {
        let sql = format!("CREATE PUBLICATION {} FOR TABLE {list}", quote_ident(publication));
        if !config.source.create {
            return Err(need(format!(
                "publication {publication:?} does not exist. Fix: {sql}; (or set source.create = true)"
            )));
        }
        client.batch_execute(&sql).await.map_err(|e| {
            need_unless_raced(
                &e,
                format!(
                    "cannot create publication {publication:?} ({sql}): {}",
                    db_message(&e)
                ),
            )
        })?;
        tracing::info!(publication = %publication, tables = %list, "created publication");
        return Ok(());
    };
    if row.get::<_, bool>(0) {
        return Ok(());
    }
    let published: Vec<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[publication],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: Vec<&&TableName> = tables
        .iter()
        .filter(|t| !published.iter().any(|(s, n)| *s == t.schema && *n == t.name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let add = missing.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    let sql = format!("ALTER PUBLICATION {} ADD TABLE {add}", quote_ident(publication));
    if !config.source.create {
        return Err(need(format!(
            "publication {publication:?} does not include {add}. Fix: {sql}; (or set source.create = true)"
        )));
    }
    client.batch_execute(&sql).await.map_err(|e| {
        need_unless_raced(
            &e,
            format!(
                "cannot extend publication {publication:?} ({sql}): {}",
                db_message(&e)
            ),
        )
    })?;
    tracing::info!(publication = %publication, tables = %add, "added tables to publication");
    Ok(())
}

async fn ensure_slot(client: &Client, config: &Config) -> Result<(), SetupError> {
    let slot = &config.source.slot;
    let row = client
        .query_opt(
            "SELECT plugin::text, slot_type, d.datname::text, coalesce(wal_status, ''), current_database()::text
             FROM pg_replication_slots s LEFT JOIN pg_database d ON d.oid = s.datoid
             WHERE slot_name = $1",
            &[slot],
        )
        .await?;
    match row {
        None => {
            if !config.source.create {
                return Err(need(format!(
                    "replication slot {slot:?} does not exist. Fix: SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput'); (or set source.create = true)"
                )));
            }
            client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[slot],
                )
                .await
                .map_err(|e| {
                    need_unless_raced(
                        &e,
                        format!("cannot create replication slot {slot:?}: {}", db_message(&e)),
                    )
                })?;
            tracing::info!(slot = %slot, "created logical replication slot");
            Ok(())
        }
        Some(r) => {
            let plugin: Option<String> = r.get(0);
            let kind: String = r.get(1);
            let db: Option<String> = r.get(2);
            let wal_status: String = r.get(3);
            let here: String = r.get(4);
            if kind != "logical" || plugin.as_deref() != Some("pgoutput") {
                return Err(need(format!(
                    "replication slot {slot:?} exists but is a {kind} slot with plugin {plugin:?}, not pgoutput. \
                     Fix: set source.slot to another name, or drop it: SELECT pg_drop_replication_slot('{slot}');"
                )));
            }
            if db.as_deref() != Some(here.as_str()) {
                return Err(need(format!(
                    "replication slot {slot:?} belongs to database {:?}, not {here:?}. Fix: set source.slot to another name",
                    db.unwrap_or_default()
                )));
            }
            if wal_status == "lost" {
                return Err(need(format!(
                    "replication slot {slot:?} was invalidated: PostgreSQL removed WAL it still needed \
                     (max_slot_wal_keep_size). Changes since are lost to this slot. Fix: SELECT pg_drop_replication_slot('{slot}'); \
                     then restart walhook to create a fresh slot (and resynchronise subscribers)"
                )));
            }
            Ok(())
        }
    }
}

/// Loads enums, domains and arrays of non-built-in types; only `oids` when given.
pub async fn load_types(
    client: &Client,
    types: &mut TypeRegistry,
    oids: Option<&[u32]>,
) -> Result<(), SetupError> {
    let rows =
        match oids {
            None => client
                .query(
                    "SELECT t.oid, t.typtype::text, t.typbasetype, t.typelem, coalesce(e.typdelim::text, ',')
                     FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem
                     WHERE t.typtype IN ('e', 'd') OR (t.typelem <> 0 AND t.typlen = -1)",
                    &[],
                )
                .await?,
            Some(oids) => client
                .query(
                    "SELECT t.oid, t.typtype::text, t.typbasetype, t.typelem, coalesce(e.typdelim::text, ',')
                     FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem
                     WHERE t.oid = ANY($1)",
                    &[&oids],
                )
                .await?,
        };
    for r in rows {
        let oid: u32 = r.get(0);
        if types.contains(oid) {
            continue;
        }
        let typtype: String = r.get(1);
        let base: u32 = r.get(2);
        let elem: u32 = r.get(3);
        let delim: String = r.get(4);
        let kind = match typtype.as_str() {
            "e" => TypeKind::Enum,
            "d" => TypeKind::Domain { base },
            _ if elem != 0 => TypeKind::Array {
                elem,
                delim: delim.bytes().next().unwrap_or(b','),
            },
            _ => TypeKind::Other,
        };
        types.insert(oid, kind);
    }
    Ok(())
}

/// The server's message, SQLSTATE, detail and hint of a failed statement.
fn db_message(e: &tokio_postgres::Error) -> String {
    crate::pg::describe(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_object_that_exists_now_counts_as_a_lost_race() {
        assert!(is_raced("42710"));
        assert!(is_raced("23505"));
        // No privilege, no such table, slot in use, disk full, read-only: real failures.
        for other in ["42501", "42P01", "55006", "53100", "25006"] {
            assert!(!is_raced(other), "{other}");
        }
    }
}
