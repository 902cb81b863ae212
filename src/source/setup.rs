//! Checks and setup before streaming. Every failure is one [`SetupError`] whose message
//! says what is wrong and the statement or setting that fixes it.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::config::{quote_ident, Config, TableName};
use crate::decode::{TypeKind, TypeRegistry};
use crate::mapping::TableMeta;
use crate::pg::PgError;
use crate::report::Finding;

use super::inspect::{inspect, Inspection};

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
    /// What the checks before a start found missing (`inspect`), each with its fix.
    #[error("{}", problem_lines(.0))]
    Checks(Vec<Finding>),
}

impl From<tokio_postgres::Error> for SetupError {
    fn from(e: tokio_postgres::Error) -> Self {
        SetupError::Query(PgError(e))
    }
}

/// The problems among `findings`, one per line.
fn problem_lines(findings: &[Finding]) -> String {
    findings
        .iter()
        .filter(|f| f.is_problem())
        .map(Finding::line)
        .collect::<Vec<_>>()
        .join("\n")
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
    let Inspection {
        tables,
        partitioned,
        findings,
    } = inspect(client, config).await?;
    if findings.iter().any(Finding::is_problem) {
        return Err(SetupError::Checks(findings));
    }
    let mut names: Vec<&TableName> = tables.keys().collect();
    names.sort();
    // Two walhook processes started at once (a first deploy of a leader and a standby)
    // both find the publication, then the slot, missing and both create it: the later
    // one's "already exists" means it is done, so it looks once more and goes on.
    match ensure_publication(client, config, names.iter().copied(), partitioned).await {
        Err(SetupError::Raced(what)) => {
            tracing::info!(%what, "another walhook set the publication up at the same time; looking again");
            ensure_publication(client, config, names.iter().copied(), partitioned).await?;
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

/// Makes sure the publication exists and holds every captured table. It publishes the
/// changes of partitions as changes of their partitioned table
/// (`publish_via_partition_root`), so a rule on a partitioned table sees every row of it,
/// whichever partition holds the row, and partitions attached later are included.
async fn ensure_publication<'a>(
    client: &Client,
    config: &Config,
    tables: impl Iterator<Item = &'a TableName>,
    partitioned: bool,
) -> Result<(), SetupError> {
    let publication = &config.source.publication;
    let tables: Vec<&TableName> = tables.collect();
    let list = tables.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    let exists = client
        .query_opt(
            "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await?;
    let Some(row) = exists else {
        let major: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int / 10000", &[])
            .await?
            .get(0);
        let sql = super::preflight::create_publication(publication, &tables, partitioned, major);
        if !config.source.create {
            return Err(need(format!(
                "publication {publication:?} does not exist. Fix: {sql} (or set source.create = true)"
            )));
        }
        if let Err(e) = client.batch_execute(&sql).await {
            let owners = owners_hint(client, &e, &tables).await;
            return Err(need_unless_raced(
                &e,
                format!(
                    "cannot create publication {publication:?}: {}{owners}. Fix: {sql}",
                    db_message(&e)
                ),
            ));
        }
        tracing::info!(publication = %publication, tables = %list, "created publication");
        return Ok(());
    };
    // PostgreSQL 18: stored generated columns are published, or a table with one and
    // REPLICA IDENTITY FULL refuses the application's updates (see `preflight`).
    let major: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int / 10000", &[])
        .await?
        .get(0);
    let may_alter: bool = client
        .query_one(
            "SELECT p.pubowner = r.oid OR r.rolsuper FROM pg_publication p, pg_roles r
             WHERE p.pubname = $1 AND r.rolname = current_user",
            &[publication],
        )
        .await?
        .get(0);
    // Without the right to alter it, `preflight` refuses the start where it matters.
    if major >= 18
        && config.source.create
        && may_alter
        && !super::preflight::publishes_generated(client, publication).await?
        && !super::preflight::with_generated_columns(client, tables.iter().copied())
            .await?
            .is_empty()
    {
        let sql = format!(
            "ALTER PUBLICATION {} SET (publish_generated_columns = stored)",
            quote_ident(publication)
        );
        client.batch_execute(&sql).await.map_err(|e| {
            need(format!(
                "cannot set publish_generated_columns on publication {publication:?} ({sql}): {}",
                db_message(&e)
            ))
        })?;
        tracing::info!(publication = %publication, "publication now publishes stored generated columns");
    }
    if partitioned && !row.get::<_, bool>(1) {
        let sql = format!(
            "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
            quote_ident(publication)
        );
        if config.source.create {
            if let Err(e) = client.batch_execute(&sql).await {
                // Another walhook starting at the same time may have set it.
                let set_now: Option<bool> = client
                    .query_opt(
                        "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
                        &[publication],
                    )
                    .await?
                    .map(|r| r.get(0));
                if set_now != Some(true) {
                    // Partitions' changes are mapped to their partitioned table's rules
                    // either way; publishing them via the root is only cheaper.
                    tracing::warn!(publication = %publication, fix = %sql, error = %db_message(&e),
                        "cannot set publish_via_partition_root on the publication; partitions' changes \
                         arrive under their own names and walhook maps them to the partitioned table's rules");
                }
            }
            tracing::info!(publication = %publication,
                "publication now publishes partitions' changes as changes of their partitioned table");
        } else {
            // The pipeline maps a partition's changes to the rules of its partitioned table
            // either way.
            tracing::warn!(publication = %publication, fix = %sql,
                "the publication sends changes of partitions under the partitions' own names; walhook maps \
                 them to the partitioned table's rules, but publishing them via the root is cheaper");
        }
    }
    if row.get::<_, bool>(0) {
        return Ok(());
    }
    let missing = super::preflight::missing_tables(client, publication, &tables).await?;
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
    if let Err(e) = client.batch_execute(&sql).await {
        let missing: Vec<&TableName> = missing.iter().collect();
        let owners = owners_hint(client, &e, &missing).await;
        return Err(need_unless_raced(
            &e,
            format!(
                "cannot extend publication {publication:?}: {}{owners}. Fix: {sql};",
                db_message(&e)
            ),
        ));
    }
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
            // A failover slot (PostgreSQL 17+) is kept in step on standbys with
            // sync_replication_slots = on, so walhook resumes on a promoted standby.
            let major: i32 = client
                .query_one("SELECT current_setting('server_version_num')::int / 10000", &[])
                .await?
                .get(0);
            let standby: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
            let failover = config.source.failover_slot.unwrap_or(major >= 17 && !standby);
            if failover && standby {
                return Err(need(
                    "source.failover_slot = true, but the source is a standby, where a slot cannot be a failover slot. \
                     Fix: remove it"
                        .into(),
                ));
            }
            if failover && major < 17 {
                return Err(need(format!(
                    "source.failover_slot = true needs PostgreSQL 17 or later; this server is {major}. Fix: remove it"
                )));
            }
            let sql = if failover {
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
            } else {
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')"
            };
            client.execute(sql, &[slot]).await.map_err(|e| {
                need_unless_raced(
                    &e,
                    format!("cannot create replication slot {slot:?}: {}", db_message(&e)),
                )
            })?;
            tracing::info!(slot = %slot, failover, "created logical replication slot");
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

/// The columns of a type lookup: oid, kind, domain base, array element and the element
/// type's delimiter. Only a true array (a varlena of category `A` with an element type)
/// counts as one: `point` and `line` also name an element type (float8), but they are
/// fixed-length types printed as their own text.
const TYPE_COLUMNS: &str = "SELECT t.oid, t.typtype::text, t.typbasetype, \
     CASE WHEN t.typelem <> 0 AND t.typlen = -1 AND t.typcategory = 'A' THEN t.typelem ELSE 0 END, \
     coalesce(e.typdelim::text, ',') \
     FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem";

/// Deepest chain of types looked up behind one another (a domain over a domain over ...).
const MAX_TYPE_ROUNDS: usize = 16;

/// Loads enums, domains and arrays of non-built-in types; only `oids` when given. Either
/// way, the base types of domains and the element types of arrays are then looked up
/// too, until every type they lead to is known, so a type decodes the same whether it
/// existed at start or was created later.
pub async fn load_types(
    client: &Client,
    types: &mut TypeRegistry,
    oids: Option<&[u32]>,
) -> Result<(), SetupError> {
    let rows = match oids {
        None => {
            client
                .query(
                    &format!(
                        "{TYPE_COLUMNS} WHERE t.typtype IN ('e', 'd') \
                         OR (t.typelem <> 0 AND t.typlen = -1 AND t.typcategory = 'A')"
                    ),
                    &[],
                )
                .await?
        }
        Some(oids) => lookup_types(client, oids).await?,
    };
    let mut missing = add_types(types, rows);
    for _ in 0..MAX_TYPE_ROUNDS {
        if missing.is_empty() {
            break;
        }
        let rows = lookup_types(client, &missing).await?;
        // A type the catalog no longer has is left unknown (its values are sent as text).
        missing = add_types(types, rows);
    }
    Ok(())
}

async fn lookup_types(client: &Client, oids: &[u32]) -> Result<Vec<tokio_postgres::Row>, SetupError> {
    Ok(client
        .query(&format!("{TYPE_COLUMNS} WHERE t.oid = ANY($1)"), &[&oids])
        .await?)
}

/// Adds the types of `rows` that `types` does not know yet; returns the base and element
/// types they name that it does not know either.
fn add_types(types: &mut TypeRegistry, rows: Vec<tokio_postgres::Row>) -> Vec<u32> {
    let mut missing = Vec::new();
    for r in rows {
        let oid: u32 = r.get(0);
        if types.contains(oid) {
            continue;
        }
        let typtype: String = r.get(1);
        let base: u32 = r.get(2);
        let elem: u32 = r.get(3);
        let delim: String = r.get(4);
        let (kind, next) = match typtype.as_str() {
            "e" => (TypeKind::Enum, None),
            "d" => (TypeKind::Domain { base }, Some(base)),
            _ if elem != 0 => (
                TypeKind::Array {
                    elem,
                    delim: delim.bytes().next().unwrap_or(b','),
                },
                Some(elem),
            ),
            _ => (TypeKind::Other, None),
        };
        types.insert(oid, kind);
        missing.extend(next);
    }
    missing.retain(|oid| *oid != 0 && !types.contains(*oid));
    missing.sort_unstable();
    missing.dedup();
    missing
}

/// The server's message, SQLSTATE, detail and hint of a failed statement.
/// For a statement refused for want of ownership ("must be owner of table"): who owns
/// `tables`, so the message names the role that must run the fix (or a superuser).
async fn owners_hint(client: &Client, e: &tokio_postgres::Error, tables: &[&TableName]) -> String {
    if e.code().map(|c| c.code()) != Some("42501") {
        return String::new();
    }
    let mut owners = Vec::new();
    for t in tables {
        let owner: Option<String> = client
            .query_opt(
                "SELECT pg_get_userbyid(c.relowner)::text FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&t.schema, &t.name],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        if let Some(owner) = owner {
            owners.push(format!("{t} is owned by role {owner}"));
        }
    }
    if owners.is_empty() {
        return String::new();
    }
    format!(
        " ({}; only a table's owner or a superuser may publish it: run the fix as that role, \
         `walhook check --sql` prints it)",
        owners.join(", ")
    )
}

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
