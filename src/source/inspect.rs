//! What the source's catalog says of the config, read-only: the server and walhook's
//! role (`preflight::server`), every rule against its table (it exists, is a logged
//! table, has the columns the rule names, logs what the rule reads of old rows, carries
//! the ordering key on every operation, may be read), then the publication and the slot
//! (`preflight`). Nothing stops the look early: every finding is collected, each with its
//! key path and fix, so `walhook check`, `walhook run` and a reload report every one.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Client;

use crate::config::{quote_ident, Config, Op, TableName};
use crate::mapping::{Condition, TableMeta};
use crate::report::{Finding, Who};

use super::preflight::{self, Captured, Server};
use super::setup::SetupError;

mod documents;

/// What the catalog says of the config's rules.
pub struct Inspection {
    /// Every captured table, with what its rules need of it.
    pub tables: HashMap<TableName, TableMeta>,
    /// Some captured table is partitioned, or a partition.
    pub partitioned: bool,
    /// Every check made, ok or not; problems and warnings with their fix.
    pub findings: Vec<Finding>,
}

impl Inspection {
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.is_problem())
    }
}

/// Checks the server, every rule against the catalog, the publication and the slot;
/// changes nothing.
pub async fn inspect(client: &Client, config: &Config) -> Result<Inspection, SetupError> {
    let mut problems = Vec::new();
    let server = preflight::server(client, config, &mut problems).await?;
    // Tables named by rules, with the paths that name them.
    let mut wanted: BTreeMap<TableName, Vec<usize>> = BTreeMap::new();
    for (i, rule) in config.events.iter().enumerate() {
        match TableName::parse(&rule.table) {
            Ok(t) => wanted.entry(t).or_default().push(i),
            Err(e) => problems.push(Finding::config(format!("events[{i}].table"), e)),
        }
    }
    let mut tables = HashMap::new();
    let mut captured = BTreeMap::new();
    let mut partitioned = false;
    for (table, rules) in &wanted {
        // A subscriber with initial_backfill reads this table when it first comes.
        let backfilled = config.subscribers.iter().position(|s| {
            s.initial_backfill && crate::mapping::tables_for(config, &s.name).contains(&table.to_string())
        });
        let first = (format!("events[{}]", rules[0]), backfilled);
        let first = (first.0.as_str(), first.1);
        let Some(facts) = table_facts(client, &server, table, first, &wanted, &mut problems).await? else {
            continue;
        };
        let before = problems.len();
        for &i in rules {
            rule_problems(config, i, table, &facts, &server, &mut problems);
        }
        if !problems[before..].iter().any(Finding::is_problem) {
            let identity = match &facts.identity.logged {
                None => "logs whole old rows (REPLICA IDENTITY FULL)".to_string(),
                Some(cols) if cols.is_empty() => "logs no old values (no replica identity)".to_string(),
                Some(cols) => format!("logs the old values of {}", cols.join(", ")),
            };
            let rules: Vec<String> = rules.iter().map(|i| format!("events[{i}]")).collect();
            problems.push(Finding::ok(
                format!("table {table}"),
                format!(
                    "serves {}; owned by {}; {identity}",
                    rules.join(", "),
                    facts.owner
                ),
            ));
        }
        // What the WAL must carry: a soft delete or a restore is an update.
        let ops: Vec<Op> = rules
            .iter()
            .flat_map(|&i| {
                let r = &config.events[i];
                let soft = r.soft_delete.as_ref().map(|_| Op::Update);
                r.on.iter()
                    .map(|&op| if op == Op::Restore { Op::Update } else { op })
                    .chain(soft)
            })
            .collect();
        // A rule that listens to updates or deletes has said so already (rule_problems).
        let writes = ops.iter().any(|op| matches!(op, Op::Update | Op::Delete));
        captured.insert(
            table.clone(),
            Captured {
                owner: facts.owner.clone(),
                ops,
                full: facts.identity.logged.is_none(),
                needs_full: rules.iter().any(|&i| reads_old(&config.events[i])),
                unidentified: (facts.identity.none() && !writes)
                    .then(|| (facts.who(&server, table), facts.identity.full_sql(table))),
            },
        );
        // Every operation of a row must carry its ordering key, or a row's delete would
        // not share the key of its insert and update: under REPLICA IDENTITY USING INDEX
        // a delete carries only that index's columns, so they are the default key.
        let default_key = facts.identity.default_key(&facts.pk);
        let keyless = rules.iter().copied().find(|&j| {
            let r = &config.events[j];
            r.key.is_none() && r.on.iter().any(|op| matches!(op, Op::Update | Op::Delete))
        });
        // Without a key of its own, a rule orders by the default key; `run` refuses one
        // on a table that has none (mapping::Mapper), so this check does too.
        if default_key.is_empty() && facts.pk.is_empty() {
            for &j in rules.iter().filter(|&&j| config.events[j].key.is_none()) {
                problems.push(Finding::config(
                    format!("events[{j}].key"),
                    format!(
                        "table {table} has no primary key; set events[{j}].key to the columns that identify a row"
                    ),
                ));
            }
        }
        if let (Some(j), true) = (keyless, default_key.is_empty() && !facts.pk.is_empty()) {
            problems.push(
                Finding::problem(
                    format!("table {table}"),
                    format!(
                    "the partitions of table {t} log different key columns in their replica identity, so a \
                     row's delete would not carry the ordering key of its insert (events[{j}] orders by the \
                     primary key). Fix: {fix} or give every partition the same replica identity, or set \
                     events[{j}].key to columns every partition logs",
                    t = table.quoted(),
                    fix = facts.identity.full_fix(table)
                ),
                )
                .at(format!("events[{j}].key"))
                .with_fix(facts.who(&server, table), facts.identity.full_sql(table)),
            );
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
    documents::sources(
        client,
        config,
        &server,
        &wanted,
        (&mut captured, &mut tables),
        &mut problems,
    )
    .await?;
    preflight::publication(client, config, &server, &captured, partitioned, &mut problems).await?;
    preflight::slot(client, config, &server, &mut problems).await?;
    Ok(Inspection {
        tables,
        partitioned,
        findings: problems,
    })
}

/// What the catalog says of one captured table.
struct TableFacts {
    oid: u32,
    /// The role that owns it.
    owner: String,
    relkind: String,
    is_partition: bool,
    pk: Vec<String>,
    identity: Identity,
    columns: Vec<String>,
}

impl TableFacts {
    /// Who may alter `table` (this one).
    fn who(&self, server: &Server, table: &TableName) -> Who {
        TableFacts::runner(server, &self.owner, table)
    }

    /// Who may alter `table`, owned by `owner`.
    fn runner(server: &Server, owner: &str, table: &TableName) -> Who {
        if server.superuser || owner == server.role {
            Who::Walhook {
                role: server.role.clone(),
            }
        } else {
            Who::Owner {
                role: owner.to_string(),
                tables: vec![table.to_string()],
            }
        }
    }
}

/// Looks `table` up; None (with a problem at `first`, the path of its first rule or document source) when
/// it cannot be captured at all.
async fn table_facts(
    client: &Client,
    server: &Server,
    table: &TableName,
    (first, backfilled): (&str, Option<usize>),
    wanted: &BTreeMap<TableName, Vec<usize>>,
    problems: &mut Vec<Finding>,
) -> Result<Option<TableFacts>, SetupError> {
    let path = format!("{first}.table");
    let subject = format!("table {table}");
    let row = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text, c.relkind::text, c.relispartition,
                    pg_get_userbyid(c.relowner)::text, c.relpersistence::text,
                    has_table_privilege(c.oid, 'SELECT'), has_schema_privilege(n.oid, 'USAGE'),
                    pg_get_userbyid(n.nspowner)::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await?;
    let problem = |message: String| Finding::problem(subject.clone(), message).at(path.clone());
    let Some(row) = row else {
        problems.push(problem(format!(
            "table {} named in {first}.table does not exist in this database \
                 (names are exact and case-sensitive: \"schema.table\")",
            table.quoted()
        )));
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let relkind: String = row.get(2);
    let is_partition: bool = row.get(3);
    let owner: String = row.get(4);
    let persistence: String = row.get(5);
    let readable: bool = row.get(6);
    let usage: bool = row.get(7);
    let schema_owner: String = row.get(8);
    if relkind != "r" && relkind != "p" {
        problems.push(problem(format!(
            "{} named in {first}.table is not a table (relkind '{relkind}'); only tables can be published",
            table.quoted()
        )));
        return Ok(None);
    }
    let who = |sql: String| {
        let facts_owner = TableFacts::runner(server, &owner, table);
        (facts_owner, vec![sql])
    };
    if persistence != "p" {
        let (what, fix) = if persistence == "u" {
            (
                "unlogged",
                Some(format!("ALTER TABLE {} SET LOGGED;", table.quoted())),
            )
        } else {
            ("temporary", None)
        };
        let mut finding = problem(format!(
            "{} is an {what} table: its changes are not written to the WAL, so logical replication \
             cannot see them{}",
            table.quoted(),
            if fix.is_some() {
                "; make it logged"
            } else {
                "; capture a permanent table"
            }
        ));
        if let Some(sql) = fix {
            let (runner, sql) = who(sql);
            finding = finding.with_fix(runner, sql);
        }
        problems.push(finding);
        return Ok(None);
    }
    if !readable || !usage {
        let (runner, sql) = read_grants(server, table, (&owner, readable), (&schema_owner, usage));
        let role = if usage {
            format!("role {}", server.role)
        } else {
            format!(
                "role {} (no USAGE on schema {})",
                server.role,
                quote_ident(&table.schema)
            )
        };
        problems.push(match backfilled {
            Some(i) => Finding::problem(
                subject.clone(),
                format!("{role} may not read it, and subscribers[{i}].initial_backfill reads it"),
            )
            .at(format!("subscribers[{i}].initial_backfill"))
            .with_fix(runner, sql),
            None => Finding::warning(
                subject.clone(),
                format!("{role} may not read it: streaming works without, but `walhook explain` and backfills read it"),
            )
            .with_fix(runner, sql),
        });
    }
    if is_partition {
        // Its changes arrive under the partitioned table a rule names, never its own.
        let captured = ancestors(client, oid)
            .await?
            .into_iter()
            .skip(1)
            .find(|a| wanted.contains_key(a));
        if let Some(root) = captured {
            problems.push(problem(format!(
                "{first}.table names {t}, a partition of {r}, which another rule captures: \
                     changes of a partition are published as changes of the partitioned table, so this rule \
                     would never fire. Fix: name {r} in {first}.table and select the partition's rows \
                     with `when` on the partition key",
                t = table.quoted(),
                r = root.quoted()
            )));
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
        owner,
        relkind,
        is_partition,
        pk,
        identity,
        columns,
    }))
}

/// What lets walhook's role read `table`: SELECT on it (from its owner) and USAGE on its
/// schema (from the schema's owner), each given unless `has`; one runner for both when
/// one role owns both, else a superuser.
fn read_grants(
    server: &Server,
    table: &TableName,
    (owner, select): (&str, bool),
    (schema_owner, usage): (&str, bool),
) -> (Who, Vec<String>) {
    let role = quote_ident(&server.role);
    let mut sql = Vec::new();
    if !usage {
        sql.push(format!(
            "GRANT USAGE ON SCHEMA {} TO {role};",
            quote_ident(&table.schema)
        ));
    }
    if !select {
        sql.push(format!("GRANT SELECT ON {} TO {role};", table.quoted()));
    }
    let who = if usage || schema_owner == owner {
        TableFacts::runner(server, owner, table)
    } else {
        Who::Superuser
    };
    (who, sql)
}

/// The problems of rule `i` on `table`: columns it names that the table lacks, old
/// values it reads that the table does not log, a key that deletes cannot carry.
fn rule_problems(
    config: &Config,
    i: usize,
    table: &TableName,
    facts: &TableFacts,
    server: &Server,
    problems: &mut Vec<Finding>,
) {
    let rule = &config.events[i];
    let identity = &facts.identity;
    let subject = format!("table {table}");
    let problem = |path: String, message: String| Finding::problem(subject.clone(), message).at(path);
    // What makes every old row whole, and who may run it.
    let full = |f: Finding| f.with_fix(facts.who(server, table), identity.full_sql(table));
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
        ("soft_delete", rule.soft_delete.clone().map(|c| vec![c])),
    ];
    for (key, list) in &named {
        for col in list.iter().flatten() {
            if !facts.columns.contains(col) {
                problems.push(problem(
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
    let writes = rule.soft_delete.is_some()
        || rule
            .on
            .iter()
            .any(|op| matches!(op, Op::Update | Op::Delete | Op::Restore));
    if writes && identity.none() {
        problems.push(full(problem(
            format!("events[{i}].on"),
            format!(
                "table {t} has no replica identity, so PostgreSQL cannot publish its updates and deletes \
                 (events[{i}].on). Fix: {fix} (or add a primary key)",
                t = table.quoted(),
                fix = identity.full_fix(table)
            ),
        )));
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
        // Whether an update sets or clears the column, or a delete's row was deleted
        // already, only the old row says.
        ("soft_delete", rule.soft_delete.is_some()),
    ];
    if let Some((key, _)) = old_readers.iter().find(|(_, reads)| *reads) {
        if identity.logged.is_some() {
            problems.push(full(problem(
                format!("events[{i}].{key}"),
                format!(
                    "events[{i}].{key} needs the old values of every column, but table {t} only logs its key. \
                     Fix: {fix}",
                    t = table.quoted(),
                    fix = identity.full_fix(table)
                ),
            )));
        }
    }
    // A delete carries only the identity columns: a key outside them would be null.
    // An update that changes such a column carries no old value of it, so its old key
    // is unknown and it is ordered under its new key only.
    let outside = |logged: &Vec<String>| rule.key.iter().flatten().find(|c| !logged.contains(c)).cloned();
    if let Some((logged, col)) = identity.logged.as_ref().and_then(|l| Some((l, outside(l)?))) {
        if rule.on.contains(&Op::Delete) {
            problems.push(full(problem(
                format!("events[{i}].key"),
                format!(
                    "column {col:?} is not part of table {t}'s replica identity, so deletes cannot carry it. \
                     Fix: {fix} or key on identity columns ({})",
                    logged.join(", "),
                    t = table.quoted(),
                    fix = identity.full_fix(table)
                ),
            )));
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

/// Whether `rule` reads the old values of every column of an update (or a delete), which
/// only `REPLICA IDENTITY FULL` logs.
fn reads_old(rule: &crate::config::EventRule) -> bool {
    let writes = rule.on.iter().any(|op| matches!(op, Op::Update | Op::Delete));
    let when = rule.when.as_deref().and_then(|w| Condition::compile(w).ok());
    rule.changed.is_some()
        || rule.ignore_changes.is_some()
        || (rule.transition.is_some() && rule.on.contains(&Op::Update))
        || (when.is_some_and(|w| w.needs_old()) && writes)
        || rule.soft_delete.is_some()
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
    Ok(table_names(&client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_partition_ancestors($1::oid::regclass) WITH ORDINALITY AS a(relid, i)
             JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace
             ORDER BY a.i",
            &[&oid],
        )
        .await?))
}

/// Tables as catalog rows name them: schema, then name.
pub(crate) fn table_names(rows: &[tokio_postgres::Row]) -> Vec<TableName> {
    rows.iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect()
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
    /// Its changes carry no old row at all: PostgreSQL refuses to publish its updates and
    /// deletes (and the application's UPDATEs and DELETEs, once a publication that
    /// publishes them holds it).
    fn none(&self) -> bool {
        self.nothing || self.logged.as_ref().is_some_and(Vec::is_empty)
    }

    /// The statements that make every old row whole, one each.
    fn full_sql(&self, table: &TableName) -> Vec<String> {
        let each = if self.not_full.is_empty() {
            std::slice::from_ref(table)
        } else {
            &self.not_full[..]
        };
        each.iter()
            .map(|t| format!("ALTER TABLE {} REPLICA IDENTITY FULL;", t.quoted()))
            .collect()
    }

    /// The statements that make every old row whole, as a fix in a message.
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
