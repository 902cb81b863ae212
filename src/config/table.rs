//! Table names as written in `[[events]] table`: exact, case-sensitive `schema.table`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// `products` is `public.products`; `catalog.Product` is `catalog."Product"`.
    pub fn parse(s: &str) -> Result<TableName, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let (schema, name) = match parts.as_slice() {
            [name] => ("public", *name),
            [schema, name] => (*schema, *name),
            _ => return Err(format!("{s:?} must be \"table\" or \"schema.table\"")),
        };
        if schema.is_empty() || name.is_empty() || s.contains('"') {
            return Err(format!(
                "{s:?} must be \"table\" or \"schema.table\", unquoted and case-sensitive"
            ));
        }
        Ok(TableName {
            schema: schema.to_string(),
            name: name.to_string(),
        })
    }

    /// The name quoted for SQL: `"catalog"."Product"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_quotes() {
        let t = TableName::parse("products").unwrap();
        assert_eq!(t.to_string(), "public.products");
        let t = TableName::parse("catalog.Product").unwrap();
        assert_eq!(t.quoted(), "\"catalog\".\"Product\"");
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse(".x").is_err());
    }
}
