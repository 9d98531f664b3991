//! `sql.schema` on PostgreSQL: the tables and views the clients' SQL sees
//! by name, with their columns, indexes and a row estimate.
//!
//! It runs as the clients' role, inside a read-only transaction like any
//! of their reads, on the schemas of that role's `search_path` (so it shows
//! what an unqualified name in a `query` resolves to). litebridge's own
//! schema is left out even if a `search_path` names it: the clients' role
//! has no rights there anyway. The row estimate is the planner's
//! (`reltuples`), none for views and for tables never analysed or vacuumed.

use std::collections::BTreeMap;

use super::{PgDatabase, Prepared, Who};
use crate::QueryOptions;
use crate::db::{ColumnInfo, IndexInfo, TableInfo};
use crate::error::Result;
use crate::value::{Params, Value};

// Every type and operator named through `pg_catalog`: these run on the
// clients' sessions, whose `search_path` the clients set (an `=` of their
// own on `oid` would otherwise run inside litebridge's query).
const COLUMNS: &str = "SELECT c.relname::pg_catalog.text,
       CASE WHEN c.relkind OPERATOR(pg_catalog.=) ANY ('{v,m}'::pg_catalog.\"char\"[])
            THEN 'view' ELSE 'table' END,
       a.attname::pg_catalog.text,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.attnotnull,
       COALESCE(a.attnum OPERATOR(pg_catalog.=) ANY (pk.indkey::pg_catalog.int2[]), false),
       pg_catalog.pg_get_expr(d.adbin, d.adrelid),
       CASE WHEN c.relkind OPERATOR(pg_catalog.=) ANY ('{v,m}'::pg_catalog.\"char\"[])
                 OR c.reltuples OPERATOR(pg_catalog.<) 0::pg_catalog.float4 THEN NULL
            ELSE c.reltuples::pg_catalog.int8 END,
       a.attgenerated OPERATOR(pg_catalog.<>) ''::pg_catalog.\"char\"
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid
   AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped
  LEFT JOIN pg_catalog.pg_index pk ON pk.indrelid OPERATOR(pg_catalog.=) c.oid AND pk.indisprimary
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid OPERATOR(pg_catalog.=) c.oid
   AND d.adnum OPERATOR(pg_catalog.=) a.attnum
 WHERE n.nspname OPERATOR(pg_catalog.=) ANY (pg_catalog.current_schemas(false))
   AND n.nspname OPERATOR(pg_catalog.<>) ?1::pg_catalog.name
   AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,v,m,f}'::pg_catalog.\"char\"[])
 ORDER BY c.relname, a.attnum";

const INDEXES: &str =
    "SELECT t.relname::pg_catalog.text, i.relname::pg_catalog.text, x.indisunique,
       COALESCE((SELECT pg_catalog.string_agg(a.attname::pg_catalog.text, ',' ORDER BY k.o)
                   FROM pg_catalog.unnest(x.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(n, o)
                   JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) t.oid
                    AND a.attnum OPERATOR(pg_catalog.=) k.n), '')
  FROM pg_catalog.pg_index x
  JOIN pg_catalog.pg_class t ON t.oid OPERATOR(pg_catalog.=) x.indrelid
  JOIN pg_catalog.pg_class i ON i.oid OPERATOR(pg_catalog.=) x.indexrelid
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.relnamespace
 WHERE n.nspname OPERATOR(pg_catalog.=) ANY (pg_catalog.current_schemas(false))
   AND n.nspname OPERATOR(pg_catalog.<>) ?1::pg_catalog.name
 ORDER BY t.relname, i.relname";

fn text(v: &Value) -> String {
    match v {
        Value::Text(t) => t.clone(),
        _ => String::new(),
    }
}

fn flag(v: &Value) -> bool {
    matches!(v, Value::Integer(1))
}

impl PgDatabase {
    /// The tables and views the clients' SQL sees by name, read for
    /// `options.caller` (whose session decides the `search_path`).
    ///
    /// # Errors
    /// As [`PgDatabase::query_with`].
    pub async fn schema(&self, options: QueryOptions) -> Result<Vec<TableInfo>> {
        let options = QueryOptions {
            max_rows: None,
            ..options
        };
        let own = || Params::Positional(vec![Value::Text(self.own_schema().to_owned())]);
        let columns = self
            .read(Who::Client, Prepared::own(COLUMNS, own())?, options)
            .await?;
        let indexes = self
            .read(Who::Client, Prepared::own(INDEXES, own())?, options)
            .await?;
        let mut tables: BTreeMap<String, TableInfo> = BTreeMap::new();
        for r in &columns.rows {
            let name = text(&r[0]);
            let t = tables.entry(name.clone()).or_insert_with(|| TableInfo {
                name,
                kind: text(&r[1]),
                without_rowid: false,
                columns: Vec::new(),
                indexes: Vec::new(),
                row_estimate: match r[7] {
                    Value::Integer(n) => Some(n),
                    _ => None,
                },
            });
            t.columns.push(ColumnInfo {
                name: text(&r[2]),
                decl_type: text(&r[3]),
                not_null: flag(&r[4]),
                primary_key: flag(&r[5]),
                // A generated column's expression is kept where defaults
                // are: it is no default (SQLite shows none either).
                default: match &r[6] {
                    Value::Text(d) if !flag(&r[8]) => Some(d.clone()),
                    _ => None,
                },
                generated: flag(&r[8]),
            });
        }
        for r in &indexes.rows {
            if let Some(t) = tables.get_mut(&text(&r[0])) {
                let columns = text(&r[3]);
                t.indexes.push(IndexInfo {
                    name: text(&r[1]),
                    unique: flag(&r[2]),
                    columns: columns
                        .split(',')
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect(),
                });
            }
        }
        Ok(tables.into_values().collect())
    }
}
