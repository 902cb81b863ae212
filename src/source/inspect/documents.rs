//! What the catalog says of the documents' source tables: each exists and may be read,
//! has the key column, and carries it on every operation (a delete carries only the
//! replica identity), so every change of a source makes its document due. Their tables
//! join the captured ones (the publication must hold them).

use super::*;

/// Checks every document's sources; adds their tables to `captured` and `tables`.
pub(super) async fn sources(
    client: &Client,
    config: &Config,
    server: &Server,
    wanted: &BTreeMap<TableName, Vec<usize>>,
    (captured, tables): (
        &mut BTreeMap<TableName, Captured>,
        &mut HashMap<TableName, TableMeta>,
    ),
    problems: &mut Vec<Finding>,
) -> Result<(), SetupError> {
    for (i, d) in config.documents.iter().enumerate() {
        let before = problems.len();
        for (j, s) in d.sources.iter().enumerate() {
            let path = format!("documents[{i}].sources[{j}]");
            let Ok(table) = TableName::parse(&s.table) else {
                continue; // the config's own check names it
            };
            // A table rules capture too has its own findings already.
            let mut scratch = Vec::new();
            let found = table_facts(client, server, &table, (&path, None), wanted, &mut scratch).await?;
            if !wanted.contains_key(&table) {
                problems.extend(scratch.into_iter().filter(|f| f.is_problem()));
            }
            let Some(facts) = found else {
                continue;
            };
            source_problems(client, server, (&table, &facts), (&path, &s.key), problems).await?;
            let needs_full = facts
                .identity
                .logged
                .as_ref()
                .is_some_and(|l| !l.contains(&s.key));
            let entry = captured.entry(table.clone()).or_insert_with(|| Captured {
                owner: facts.owner.clone(),
                ops: Vec::new(),
                full: facts.identity.logged.is_none(),
                needs_full: false,
                // A document's source without one is a problem of its own (below).
                unidentified: None,
            });
            for op in [Op::Insert, Op::Update, Op::Delete] {
                if !entry.ops.contains(&op) {
                    entry.ops.push(op);
                }
            }
            entry.needs_full |= needs_full;
            tables.entry(table).or_insert_with(|| TableMeta {
                default_key: facts.identity.default_key(&facts.pk),
                oid: facts.oid,
            });
        }
        if !problems[before..].iter().any(Finding::is_problem) {
            let names: Vec<&str> = d.sources.iter().map(|s| s.table.as_str()).collect();
            problems.push(Finding::ok(
                format!("document {}", d.name),
                format!("made due by changes of {}", names.join(", ")),
            ));
        }
    }
    Ok(())
}

/// The problems of one source: its key column, whether its deletes carry it, whether
/// walhook may read the table.
async fn source_problems(
    client: &Client,
    server: &Server,
    (table, facts): (&TableName, &TableFacts),
    (path, key): (&str, &str),
    problems: &mut Vec<Finding>,
) -> Result<(), SetupError> {
    let subject = format!("table {table}");
    if !facts.columns.iter().any(|c| c == key) {
        problems.push(
            Finding::problem(
                subject.clone(),
                format!(
                    "table {} has no column {key:?} (it has: {})",
                    table.quoted(),
                    facts.columns.join(", ")
                ),
            )
            .at(format!("{path}.key")),
        );
        return Ok(());
    }
    let identity = &facts.identity;
    let full = |f: Finding| f.with_fix(facts.who(server, table), identity.full_sql(table));
    if identity.nothing || identity.logged.as_ref().is_some_and(Vec::is_empty) {
        problems.push(full(
            Finding::problem(
                subject.clone(),
                format!(
                    "table {t} has no replica identity, so PostgreSQL cannot publish its updates and deletes, \
                     and they would not make documents due. Fix: {fix} (or add a primary key)",
                    t = table.quoted(),
                    fix = identity.full_fix(table)
                ),
            )
            .at(format!("{path}.table")),
        ));
    } else if let Some(logged) = identity.logged.as_ref().filter(|l| !l.iter().any(|c| c == key)) {
        problems.push(full(
            Finding::problem(
                subject.clone(),
                format!(
                    "column {key:?} is not part of table {t}'s replica identity ({}), so a delete of a row (or an \
                     update that moves it to another key) does not say which document it belonged to, and that \
                     document would not be made again. Fix: {fix}",
                    logged.join(", "),
                    t = table.quoted(),
                    fix = identity.full_fix(table)
                ),
            )
            .at(format!("{path}.key")),
        ));
    }
    let row = client
        .query_one(
            "SELECT has_table_privilege(c.oid, 'SELECT'), has_schema_privilege(c.relnamespace, 'USAGE'),
                    pg_get_userbyid(n.nspowner)::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&facts.oid],
        )
        .await?;
    let (select, usage): (bool, bool) = (row.get(0), row.get(1));
    if !select || !usage {
        let schema_owner: String = row.get(2);
        let (who, sql) = read_grants(server, table, (&facts.owner, select), (&schema_owner, usage));
        problems.push(
            Finding::problem(
                subject,
                format!(
                    "role {} may not read it, and the document's query reads it",
                    server.role
                ),
            )
            .at(format!("{path}.table"))
            .with_fix(who, sql),
        );
    }
    Ok(())
}
