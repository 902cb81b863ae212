//! Relations as the stream names them: which rules take a relation's changes (its own,
//! or its partitioned table's), what is said once when no rule takes them or a rule's key
//! lost its column, and the column types looked up on the catalog connection.

use super::*;

impl Pipeline {
    /// Decides which rules take a relation's changes: those of the relation itself, else
    /// those of the nearest partitioned table it is a partition of (a publication without
    /// `publish_via_partition_root` sends partitions' changes under their own names).
    /// Warns once when a rule's key names a column the relation lacks.
    pub(super) async fn map_relation(&mut self, oid: u32, rel: &mut Rel) {
        rel.table = rel.own.clone();
        if !self.mapper.watches(&rel.own) {
            if rel.ancestors.is_none() {
                rel.ancestors = self.partition_ancestors(oid, &rel.own).await;
            }
            if let Some(root) = rel.ancestors.iter().flatten().find(|a| self.mapper.watches(a)) {
                tracing::info!(partition = %rel.own, table = %root,
                    "changes of a partition arrive under its own name: the partitioned table's rules take them");
                rel.table = root.clone();
            }
        }
        rel.watched = self.mapper.watches(&rel.table);
        rel.unmatched_told = false;
        let names: Vec<&str> = rel.columns.iter().map(|(n, _, _)| &**n).collect();
        let missing = self.mapper.missing_key_columns(&rel.table, &names);
        for (rule, col) in &missing {
            tracing::warn!(rule = %rule, table = %rel.table, column = %col,
                "the rule's ordering key names a column the table no longer has (dropped or renamed): \
                 its events now carry a null key and all share one ordering key, so they go out one at a \
                 time. Fix: set the rule's `key` to columns the table has (or restore the column), then \
                 reload with SIGHUP");
        }
        rel.keyless_rules = missing.into_iter().map(|(rule, _)| rule).collect();
    }

    /// The partitioned tables `own` is a partition of, nearest first (empty when it is
    /// none), looked up on the catalog connection; None when the lookup failed.
    pub(super) async fn partition_ancestors(&mut self, oid: u32, own: &TableName) -> Option<Vec<TableName>> {
        let looked_up = tokio::time::timeout(CATALOG_TIMEOUT, async {
            let catalog = match self.catalog.take().filter(|c| !c.is_closed()) {
                Some(c) => c,
                None => self.source.connect("catalog").await?,
            };
            let catalog = self.catalog.insert(catalog);
            crate::source::inspect::ancestors(catalog, oid).await
        })
        .await;
        let error = match looked_up {
            Ok(Ok(list)) => return Some(list.into_iter().filter(|t| t != own).collect()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {CATALOG_TIMEOUT:?}"),
        };
        self.catalog = None;
        tracing::warn!(%error, table = %own, "cannot look up whether the table is a partition");
        None
    }

    /// Looks up column types the registry does not know yet. The catalog connection is
    /// opened again when it closed (a server restart), and a lookup may take at most
    /// `CATALOG_TIMEOUT`, so a dead connection cannot stall the stream.
    pub(super) async fn resolve_types(&mut self, oids: &[u32]) {
        let looked_up = tokio::time::timeout(CATALOG_TIMEOUT, async {
            let catalog = match self.catalog.take().filter(|c| !c.is_closed()) {
                Some(c) => c,
                None => self.source.connect("catalog").await?,
            };
            let catalog = self.catalog.insert(catalog);
            setup::load_types(catalog, &mut self.types, Some(oids)).await
        })
        .await;
        let error = match looked_up {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {CATALOG_TIMEOUT:?}"),
        };
        // The next lookup uses a new connection.
        self.catalog = None;
        tracing::warn!(%error, ?oids, "cannot look up column types; their values are sent as text");
    }
}

/// Says once per relation that its changes reach walhook but no rule takes them, and
/// what to do when that was not meant.
pub(super) fn tell_unmatched(oid: u32, rel: &Rel, mapper: &Mapper) {
    match mapper.captured_as(oid) {
        Some(was) if *was != rel.own => tracing::warn!(table = %was, now = %rel.own,
            "a captured table was renamed: its changes are skipped (counted in walhook_changes_unmatched_total). \
             Fix: name the new table in events[].table and reload with SIGHUP"),
        _ => tracing::warn!(table = %rel.own,
            "changes of this table reach walhook but no rule takes them; they are skipped (counted in \
             walhook_changes_unmatched_total). If they should make events, add a rule for it (for a partition, \
             name its partitioned table); otherwise remove it from the publication"),
    }
}
