//! What the source's catalog says of the config, read-only: the server's prerequisites
//! (wal_level, the replication privilege, writing stream time), then every rule against
//! its table (it exists, is a table, has the columns the rule names, logs what the rule
//! reads of old rows, carries the ordering key on every operation). A server
//! prerequisite stops the look at once; a rule's problems are all collected, each with
//! its key path, so `walhook check`, `walhook run` and a reload report every one.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Client;

use crate::config::{quote_ident, Config, Op, Problem, TableName};
use crate::mapping::{Condition, TableMeta};

use super::setup::SetupError;

/// What the catalog says of the config's rules.
pub struct Inspection {
    /// Every captured table, with what its rules need of it.
    pub tables: HashMap<TableName, TableMeta>,
    /// Some captured table is partitioned, or a partition.
    pub partitioned: bool,
    /// Every rule whose table cannot serve it, with the fix.
    pub problems: Vec<Problem>,
}

fn need(msg: String) -> SetupError {
    SetupError::Prerequisite(msg)
}

/// Checks the server, then every rule against the catalog; changes nothing.
pub async fn inspect(client: &Client, config: &Config) -> Result<Inspection, SetupError> {
    server(client, config).await?;
    let mut problems = Vec::new();
    // Tables named by rules, with the paths that name them.
    let mut wanted: BTreeMap<TableName, Vec<usize>> = BTreeMap::new();
    for (i, rule) in config.events.iter().enumerate() {
        match TableName::parse(&rule.table) {
            Ok(t) => wanted.entry(t).or_default().push(i),
            Err(e) => problems.push(Problem::new(format!("events[{i}].table"), e)),
        }
    }
    let mut tables = HashMap::new();
    let mut partitioned = false;
    for (table, rules) in &wanted {
        let Some(facts) = table_facts(client, table, rules[0], &wanted, &mut problems).await? else {
            continue;
        };
        for &i in rules {
            rule_problems(config, i, table, &facts, &mut problems);
        }
        // Every operation of a row must carry its ordering key, or a row's delete would
        // not share the key of its insert and update: under REPLICA IDENTITY USING INDEX
        // a delete carries only that index's columns, so they are the default key.
        let default_key = facts.identity.default_key(&facts.pk);
        let keyless = rules.iter().copied().find(|&j| {
            let r = &config.events[j];
            r.key.is_none() && r.on.iter().any(|op| matches!(op, Op::Update | Op::Delete))
        });
        if let (Some(j), true) = (keyless, default_key.is_empty() && !facts.pk.is_empty()) {
            problems.push(Problem::new(
                format!("events[{j}].key"),
                format!(
                    "the partitions of table {t} log different key columns in their replica identity, so a \
                     row's delete would not carry the ordering key of its insert (events[{j}] orders by the \
                     primary key). Fix: {fix} or give every partition the same replica identity, or set \
                     events[{j}].key to columns every partition logs",
                    t = table.quoted(),
                    fix = facts.identity.full_fix(table)
                ),
            ));
        }
        tables.insert(
            table.clone(),
            TableMeta {
                default_key,
                oid: facts.oid,
            },
        );
        partitioned |= facts.relkind == "p" || facts.is_partition;
    }
    Ok(Inspection {
        tables,
        partitioned,
        problems,
    })
}

/// The server's prerequisites: wal_level, the replication privilege, and writing stream
/// time into the WAL when a rule coalesces.
async fn server(client: &Client, config: &Config) -> Result<(), SetupError> {
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
    Ok(())
}

/// What the catalog says of one captured table.
struct TableFacts {
    oid: u32,
    relkind: String,
    is_partition: bool,
    pk: Vec<String>,
    identity: Identity,
    columns: Vec<String>,
}

/// Looks `table` up; None (with a problem at the path of `first`, its first rule) when
/// it cannot be captured at all.
async fn table_facts(
    client: &Client,
    table: &TableName,
    first: usize,
    wanted: &BTreeMap<TableName, Vec<usize>>,
    problems: &mut Vec<Problem>,
) -> Result<Option<TableFacts>, SetupError> {
    let path = format!("events[{first}].table");
    let row = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text, c.relkind::text, c.relispartition FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await?;
    let Some(row) = row else {
        problems.push(Problem::new(
            path,
            format!(
                "table {} named in events[{first}].table does not exist in this database \
                 (names are exact and case-sensitive: \"schema.table\")",
                table.quoted()
            ),
        ));
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let relkind: String = row.get(2);
    let is_partition: bool = row.get(3);
    if relkind != "r" && relkind != "p" {
        problems.push(Problem::new(
            path,
            format!(
                "{} named in events[{first}].table is not a table (relkind '{relkind}'); only tables can be published",
                table.quoted()
            ),
        ));
        return Ok(None);
    }
    if is_partition {
        // Its changes arrive under the partitioned table a rule names, never its own.
        let captured = ancestors(client, oid)
            .await?
            .into_iter()
            .skip(1)
            .find(|a| wanted.contains_key(a));
        if let Some(root) = captured {
            problems.push(Problem::new(
                path,
                format!(
                    "events[{first}].table names {t}, a partition of {r}, which another rule captures: \
                     changes of a partition are published as changes of the partitioned table, so this rule \
                     would never fire. Fix: name {r} in events[{first}].table and select the partition's rows \
                     with `when` on the partition key",
                    t = table.quoted(),
                    r = root.quoted()
                ),
            ));
            return Ok(None);
        }
    }
    let pk = column_names(client, PRIMARY_KEY_OF, oid).await?;
    let identity = replica_identity(client, oid, &relkind, &row.get::<_, String>(1), &pk).await?;
    let columns = column_names(
        client,
        "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
        oid,
    )
    .await?;
    Ok(Some(TableFacts {
        oid,
        relkind,
        is_partition,
        pk,
        identity,
        columns,
    }))
}

/// The problems of rule `i` on `table`: columns it names that the table lacks, old
/// values it reads that the table does not log, a key that deletes cannot carry.
fn rule_problems(
    config: &Config,
    i: usize,
    table: &TableName,
    facts: &TableFacts,
    problems: &mut Vec<Problem>,
) {
    let rule = &config.events[i];
    let identity = &facts.identity;
    // A `when` that does not compile is reported by mapping's check; its columns are
    // not looked at here.
    let when = rule.when.as_deref().and_then(|w| Condition::compile(w).ok());
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
            if !facts.columns.contains(col) {
                problems.push(Problem::new(
                    format!("events[{i}].{key}"),
                    format!(
                        "table {} has no column {col:?} (it has: {})",
                        table.quoted(),
                        facts.columns.join(", ")
                    ),
                ));
            }
        }
    }
    let writes = rule.on.iter().any(|op| matches!(op, Op::Update | Op::Delete));
    let no_identity = identity.nothing || identity.logged.as_ref().is_some_and(Vec::is_empty);
    if writes && no_identity {
        problems.push(Problem::new(
            format!("events[{i}].on"),
            format!(
                "table {t} has no replica identity, so PostgreSQL cannot publish its updates and deletes \
                 (events[{i}].on). Fix: {fix} (or add a primary key)",
                t = table.quoted(),
                fix = identity.full_fix(table)
            ),
        ));
        return;
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
            problems.push(Problem::new(
                format!("events[{i}].{key}"),
                format!(
                    "events[{i}].{key} needs the old values of every column, but table {t} only logs its key. \
                     Fix: {fix}",
                    t = table.quoted(),
                    fix = identity.full_fix(table)
                ),
            ));
        }
    }
    // A delete carries only the identity columns: a key outside them would be null.
    // An update that changes such a column carries no old value of it, so its old key
    // is unknown and it is ordered under its new key only.
    let outside = |logged: &Vec<String>| rule.key.iter().flatten().find(|c| !logged.contains(c)).cloned();
    if let Some((logged, col)) = identity.logged.as_ref().and_then(|l| Some((l, outside(l)?))) {
        if rule.on.contains(&Op::Delete) {
            problems.push(Problem::new(
                format!("events[{i}].key"),
                format!(
                    "column {col:?} is not part of table {t}'s replica identity, so deletes cannot carry it. \
                     Fix: {fix} or key on identity columns ({})",
                    logged.join(", "),
                    t = table.quoted(),
                    fix = identity.full_fix(table)
                ),
            ));
        } else if rule.on.contains(&Op::Update) {
            tracing::warn!(rule = %format!("events[{i}]"), table = %table, column = %col,
                fix = %identity.full_fix(table),
                "the rule's key column is not part of the table's replica identity: an update that \
                 changes it does not say the row's old key, so such an update is ordered under its new \
                 key only (it may overtake the row's earlier events). Set REPLICA IDENTITY FULL, or key on \
                 identity columns");
        }
    }
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
