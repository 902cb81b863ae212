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
    // Some captured table is partitioned, or a partition.
    let mut partitioned = false;
    for (table, rules) in &wanted {
        let first = rules[0];
        let row = client
            .query_opt(
                "SELECT c.oid, c.relreplident::text, c.relkind::text, c.relispartition FROM pg_class c
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
        let relkind: String = row.get(2);
        let is_partition: bool = row.get(3);
        if relkind != "r" && relkind != "p" {
            return Err(need(format!(
                "{} named in events[{first}].table is not a table (relkind '{relkind}'); only tables can be published",
                table.quoted()
            )));
        }
        if is_partition {
            // Its changes arrive under the partitioned table a rule names, never its own.
            let captured = ancestors(client, oid)
                .await?
                .into_iter()
                .skip(1)
                .find(|a| wanted.contains_key(a));
            if let Some(root) = captured {
                return Err(need(format!(
                    "events[{first}].table names {t}, a partition of {r}, which another rule captures: \
                     changes of a partition are published as changes of the partitioned table, so this rule \
                     would never fire. Fix: name {r} in events[{first}].table and select the partition's rows \
                     with `when` on the partition key",
                    t = table.quoted(),
                    r = root.quoted()
                )));
            }
        }
        let pk: Vec<String> = client
            .query(PRIMARY_KEY_OF, &[&oid])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let identity = replica_identity(client, oid, &relkind, &row.get::<_, String>(1), &pk).await?;
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
            let no_identity = identity.nothing || identity.logged.as_ref().is_some_and(Vec::is_empty);
            if writes && no_identity {
                return Err(need(format!(
                    "table {t} has no replica identity, so PostgreSQL cannot publish its updates and deletes \
                     (events[{i}].on). Fix: {fix} (or add a primary key)",
                    t = table.quoted(),
                    fix = identity.full_fix(table)
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
                if identity.logged.is_some() {
                    return Err(need(format!(
                        "events[{i}].{key} needs the old values of every column, but table {t} only logs its key. \
                         Fix: {fix}",
                        t = table.quoted(),
                        fix = identity.full_fix(table)
                    )));
                }
            }
            // A delete carries only the identity columns: a key outside them would be null.
            // An update that changes such a column carries no old value of it, so its
            // old key is unknown and it is ordered under its new key only.
            let outside =
                |logged: &Vec<String>| rule.key.iter().flatten().find(|c| !logged.contains(c)).cloned();
            if let Some((logged, col)) = identity.logged.as_ref().and_then(|l| Some((l, outside(l)?))) {
                if rule.on.contains(&Op::Delete) {
                    return Err(need(format!(
                        "events[{i}].key: column {col:?} is not part of table {t}'s replica identity, so deletes \
                         cannot carry it. Fix: {fix} or key on identity columns ({})",
                        logged.join(", "),
                        t = table.quoted(),
                        fix = identity.full_fix(table)
                    )));
                }
                if rule.on.contains(&Op::Update) {
                    tracing::warn!(rule = %format!("events[{i}]"), table = %table, column = %col,
                        fix = %identity.full_fix(table),
                        "the rule's key column is not part of the table's replica identity: an update that \
                         changes it does not say the row's old key, so such an update is ordered under its new \
                         key only (it may overtake the row's earlier events). Set REPLICA IDENTITY FULL, or key on \
                         identity columns");
                }
            }
        }
        // Every operation of a row must carry its ordering key, or a row's delete would
        // not share the key of its insert and update: under REPLICA IDENTITY USING INDEX
        // a delete carries only that index's columns, so they are the default key.
        let default_key = identity.default_key(&pk);
        let keyless = config.events[..].iter().enumerate().find(|(j, r)| {
            rules.contains(j)
                && r.key.is_none()
                && r.on.iter().any(|op| matches!(op, Op::Update | Op::Delete))
        });
        if let (Some((j, _)), true) = (keyless, default_key.is_empty() && !pk.is_empty()) {
            return Err(need(format!(
                "the partitions of table {t} log different key columns in their replica identity, so a row's \
                 delete would not carry the ordering key of its insert (events[{j}] orders by the primary key). \
                 Fix: {fix} or give every partition the same replica identity, or set events[{j}].key to columns \
                 every partition logs",
                t = table.quoted(),
                fix = identity.full_fix(table)
            )));
        }
        tables.insert(table.clone(), TableMeta { default_key, oid });
        partitioned |= relkind == "p" || is_partition;
    }

    // Two walhook processes started at once (a first deploy of a leader and a standby)
    // both find the publication, then the slot, missing and both create it: the later
    // one's "already exists" means it is done, so it looks once more and goes on.
    match ensure_publication(client, config, wanted.keys(), partitioned).await {
        Err(SetupError::Raced(what)) => {
            tracing::info!(%what, "another walhook set the publication up at the same time; looking again");
            ensure_publication(client, config, wanted.keys(), partitioned).await?;
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
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
            quote_ident(publication)
        );
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
                    return Err(need(format!(
                        "cannot set publish_via_partition_root on publication {publication:?} ({sql}): {}",
                        db_message(&e)
                    )));
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
    // A table counts as published when it, a partitioned table it is a partition of, or
    // one of its partitions is listed (without publish_via_partition_root the list names
    // a partitioned table's partitions).
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let missing: Vec<TableName> = client
        .query(
            "SELECT u.s, u.n FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(s, n, i)
             WHERE NOT EXISTS (
               SELECT 1 FROM pg_publication_tables pt
               JOIN pg_namespace pn ON pn.nspname = pt.schemaname
               JOIN pg_class pc ON pc.relnamespace = pn.oid AND pc.relname = pt.tablename
               WHERE pt.pubname = $1 AND pc.oid IN (
                 SELECT format('%I.%I', u.s, u.n)::regclass
                 UNION ALL SELECT relid FROM pg_partition_ancestors(format('%I.%I', u.s, u.n)::regclass)
                 UNION ALL SELECT relid FROM pg_partition_tree(format('%I.%I', u.s, u.n)::regclass)))
             ORDER BY u.i",
            &[publication, &schemas, &names],
        )
        .await?
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
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

/// The columns of the primary key of table `$1` (an oid), in key order.
const PRIMARY_KEY_OF: &str = "SELECT a.attname::text FROM pg_index i
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
     WHERE i.indrelid = $1 AND i.indisprimary
     ORDER BY array_position(i.indkey::int2[], a.attnum)";

/// The columns of the replica identity index of table `$1` (an oid), in key order.
const IDENTITY_INDEX_OF: &str = "SELECT a.attname::text FROM pg_index i
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
     WHERE i.indrelid = $1 AND i.indisreplident
     ORDER BY array_position(i.indkey::int2[], a.attnum)";

/// The columns a rule without `key` orders the events of table ($1, $2) by: the replica
/// identity index's under `REPLICA IDENTITY USING INDEX` (a delete carries nothing
/// else), otherwise the primary key's (see `prepare`, which also looks at partitions).
pub const DEFAULT_KEY: &str = "SELECT a.attname::text FROM pg_class c
     JOIN pg_namespace n ON n.oid = c.relnamespace
     JOIN pg_index i ON i.indrelid = c.oid
       AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident ELSE i.indisprimary END
     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey::int2[])
     WHERE n.nspname = $1 AND c.relname = $2
     ORDER BY array_position(i.indkey::int2[], a.attnum)";

/// A partition and its partitioned ancestors, nearest first (nothing for a table that is
/// not a partition).
pub async fn ancestors(client: &Client, oid: u32) -> Result<Vec<TableName>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_partition_ancestors($1::oid::regclass) WITH ORDINALITY AS a(relid, i)
             JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace
             ORDER BY a.i",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect())
}

/// What a table's changes carry of their old rows. For a partitioned table, what its
/// partitions log: PostgreSQL takes the old row from the partition, and a partitioned
/// table's own replica identity is not passed on to its partitions.
struct Identity {
    /// Some partition (or the table) has `REPLICA IDENTITY NOTHING`.
    nothing: bool,
    /// The columns the old row of every delete (and of an update that changes them)
    /// carries, in key order; None when it is the whole row (FULL everywhere).
    logged: Option<Vec<String>>,
    /// Every partition not FULL logs the same columns (always true of a plain table).
    uniform: bool,
    /// Partitions not `REPLICA IDENTITY FULL` (empty for a plain table).
    not_full: Vec<TableName>,
}

impl Identity {
    /// The statements that make every old row whole.
    fn full_fix(&self, table: &TableName) -> String {
        if self.not_full.is_empty() {
            return format!("ALTER TABLE {} REPLICA IDENTITY FULL;", table.quoted());
        }
        let each: Vec<String> = self
            .not_full
            .iter()
            .map(|p| format!("ALTER TABLE {} REPLICA IDENTITY FULL;", p.quoted()))
            .collect();
        format!(
            "{} (a partitioned table's replica identity is not passed on to its partitions: \
             set it on each, also on partitions created later)",
            each.join(" ")
        )
    }

    /// The ordering key of a rule without `key`: the primary key when every old row
    /// carries it, else the identity index's columns; empty when partitions log
    /// different columns (or nothing).
    fn default_key(&self, pk: &[String]) -> Vec<String> {
        match &self.logged {
            None => pk.to_vec(),
            Some(logged) if !pk.is_empty() && pk.iter().all(|c| logged.contains(c)) => pk.to_vec(),
            Some(logged) if self.uniform => logged.clone(),
            Some(_) => Vec::new(),
        }
    }
}

/// What one relation logs of its old rows, by its `relreplident`: None for FULL.
async fn logged_columns(
    client: &Client,
    oid: u32,
    kind: &str,
    pk: &[String],
) -> Result<Option<Vec<String>>, SetupError> {
    Ok(match kind {
        "f" => None,
        "i" => Some(column_names(client, IDENTITY_INDEX_OF, oid).await?),
        "n" => Some(Vec::new()),
        _ => Some(pk.to_vec()),
    })
}

async fn replica_identity(
    client: &Client,
    oid: u32,
    relkind: &str,
    own: &str,
    pk: &[String],
) -> Result<Identity, SetupError> {
    if relkind != "p" {
        return Ok(Identity {
            nothing: own == "n",
            logged: logged_columns(client, oid, own, pk).await?,
            uniform: true,
            not_full: Vec::new(),
        });
    }
    let leaves = client
        .query(
            "SELECT c.oid, c.relreplident::text, n.nspname::text, c.relname::text
             FROM pg_partition_tree($1::oid::regclass) p JOIN pg_class c ON c.oid = p.relid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE p.isleaf ORDER BY n.nspname, c.relname",
            &[&oid],
        )
        .await?;
    if leaves.is_empty() {
        // No partition yet: those created later start with the default identity (their
        // primary key is the partitioned table's).
        return Ok(Identity {
            nothing: false,
            logged: Some(pk.to_vec()),
            uniform: true,
            not_full: Vec::new(),
        });
    }
    let mut nothing = false;
    let mut not_full = Vec::new();
    let mut sets: Vec<Vec<String>> = Vec::new();
    for leaf in &leaves {
        let kind: String = leaf.get(1);
        nothing |= kind == "n";
        if let Some(cols) = logged_columns(client, leaf.get(0), &kind, pk).await? {
            not_full.push(TableName {
                schema: leaf.get(2),
                name: leaf.get(3),
            });
            sets.push(cols);
        }
    }
    // What every partition's old rows carry.
    let logged = sets.first().map(|first| {
        first
            .iter()
            .filter(|c| sets.iter().all(|s| s.contains(c)))
            .cloned()
            .collect::<Vec<_>>()
    });
    let uniform = sets.windows(2).all(|w| w[0] == w[1]);
    Ok(Identity {
        nothing,
        logged,
        uniform,
        not_full,
    })
}

async fn column_names(client: &Client, query: &str, oid: u32) -> Result<Vec<String>, SetupError> {
    Ok(client
        .query(query, &[&oid])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
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
