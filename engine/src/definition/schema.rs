//! The JSON Schema of each record type the workflows emit, generated from their `data`
//! declarations: what a receiver of `approval_record` v1 may rely on is what every emit of
//! `approval_record` v1 declares. The repository keeps the generated files in `docs/schemas/`
//! (`shenguan workflow schemas --out docs/schemas`); a test checks they are current, and the
//! delivery tests validate what is really sent against them.

use std::collections::BTreeMap;

use super::expr::Operand;
use super::{DataValue, Definition, EmitSpec, Type, Value};

/// One field of a type, merged over every emit of it.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    Value { ty: Type, nullable: bool, literals: Option<Vec<Value>> },
    Objects(Vec<String>),
}

/// A record type and version, merged over every emit of it.
#[derive(Debug, Default)]
struct Shape {
    fields: BTreeMap<String, Field>,
    /// Where it is emitted: `workflow vN: channel`.
    sources: Vec<String>,
    /// The channels it is emitted on.
    channels: Vec<String>,
}

fn field_of(value: &DataValue) -> Field {
    match value {
        DataValue::InstanceId => Field::Value { ty: Type::Str, nullable: false, literals: None },
        DataValue::Value { operand: Operand::Literal(v), ty, .. } => {
            Field::Value { ty: *ty, nullable: false, literals: Some(vec![v.clone()]) }
        }
        DataValue::Value { ty, nullable, .. } => Field::Value { ty: *ty, nullable: *nullable, literals: None },
        DataValue::Objects { fields, .. } => Field::Objects(fields.clone()),
    }
}

fn merge(name: &str, kind: &str, into: &mut Field, from: Field) -> Result<(), String> {
    match (into, from) {
        (
            Field::Value { ty, nullable, literals },
            Field::Value { ty: other_ty, nullable: other_nullable, literals: other_literals },
        ) if *ty == other_ty => {
            *nullable |= other_nullable;
            *literals = match (literals.take(), other_literals) {
                (Some(mut a), Some(b)) => {
                    for v in b {
                        if !a.contains(&v) {
                            a.push(v);
                        }
                    }
                    Some(a)
                }
                _ => None,
            };
            Ok(())
        }
        (Field::Objects(a), Field::Objects(b)) if *a == b => Ok(()),
        (into, from) => {
            Err(format!("type {kind}: field {name} is declared as {into:?} in one emit and {from:?} in another"))
        }
    }
}

/// Every record type (and schema version) the definitions emit, with its JSON Schema; an error
/// when two emits of one type and version declare different fields.
pub fn schemas<'a>(
    defs: impl IntoIterator<Item = &'a Definition>,
) -> Result<BTreeMap<(String, u32), serde_json::Value>, String> {
    let mut shapes: BTreeMap<(String, u32), Shape> = BTreeMap::new();
    for def in defs {
        for emit in def.emits() {
            add(&mut shapes, def, emit)?;
        }
    }
    Ok(shapes
        .into_iter()
        .map(|(key, shape)| {
            let schema = render(&key.0, key.1, &shape);
            (key, schema)
        })
        .collect())
}

fn add(shapes: &mut BTreeMap<(String, u32), Shape>, def: &Definition, emit: &EmitSpec) -> Result<(), String> {
    let key = (emit.kind.clone(), emit.schema_version);
    let first = !shapes.contains_key(&key);
    let shape = shapes.entry(key).or_default();
    let declared: Vec<&String> = emit.data.iter().map(|(n, _)| n).collect();
    if !first {
        let known: Vec<&String> = shape.fields.keys().collect();
        if known != declared {
            return Err(format!(
                "type {} v{}: {} v{} declares the fields {declared:?}, another emit {known:?}; one type has one shape",
                emit.kind, emit.schema_version, def.name, def.version
            ));
        }
    }
    for (name, value) in &emit.data {
        let field = field_of(value);
        match shape.fields.get_mut(name) {
            Some(existing) => merge(name, &emit.kind, existing, field)?,
            None => {
                shape.fields.insert(name.clone(), field);
            }
        }
    }
    let source = format!("{} v{}", def.name, def.version);
    if !shape.sources.contains(&source) {
        shape.sources.push(source);
    }
    if !shape.channels.contains(&emit.channel) {
        shape.channels.push(emit.channel.clone());
    }
    Ok(())
}

fn value_schema(ty: Type) -> serde_json::Value {
    match ty {
        Type::Str => serde_json::json!({ "type": "string" }),
        Type::Int => serde_json::json!({ "type": "integer" }),
        Type::Bool => serde_json::json!({ "type": "boolean" }),
        Type::Date => {
            serde_json::json!({ "type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$" })
        }
        Type::Instant => serde_json::json!({
            "type": "string",
            "format": "date-time",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\+08:00$"
        }),
    }
}

fn field_schema(field: &Field) -> serde_json::Value {
    match field {
        Field::Value { ty, nullable, literals } => {
            let mut schema = value_schema(*ty);
            if let Some(values) = literals {
                schema["enum"] = serde_json::Value::Array(values.iter().map(Value::to_json).collect());
            }
            if *nullable {
                let base = schema["type"].clone();
                schema["type"] = serde_json::json!([base, "null"]);
            }
            schema
        }
        Field::Objects(fields) => {
            let properties: serde_json::Map<String, serde_json::Value> =
                fields.iter().map(|f| (f.clone(), serde_json::json!({ "type": "string" }))).collect();
            serde_json::json!({
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": properties,
                    "required": fields,
                    "additionalProperties": false
                }
            })
        }
    }
}

fn render(kind: &str, version: u32, shape: &Shape) -> serde_json::Value {
    let properties: serde_json::Map<String, serde_json::Value> =
        shape.fields.iter().map(|(name, field)| (name.clone(), field_schema(field))).collect();
    let required: Vec<&String> = shape.fields.keys().collect();
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("urn:shenguan:record:{kind}:v{version}"),
        "title": format!("{kind} v{version}"),
        "description": format!(
            "The record `{kind}` (schema version {version}) as every receiver gets it: the webhook, SMS-gateway and credit-platform bodies carry these three fields beside their own, and EventsService.Event and the timeline carry `type`, `schema_version` and `data_json`. Emitted by {} on the channel(s) {}. Generated from the workflows' `data` declarations: `shenguan workflow schemas`.",
            shape.sources.join(", "),
            shape.channels.join(", ")
        ),
        "type": "object",
        "required": ["type", "schema_version", "data"],
        "properties": {
            "type": { "const": kind },
            "schema_version": { "const": version },
            "data": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false
            }
        }
    })
}

/// The file name of a type's schema: `approval_record.v1.json`.
pub fn file_name(kind: &str, version: u32) -> String {
    format!("{kind}.v{version}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_type_has_one_shape_and_credit_records_name_their_kinds() {
        let registry = crate::definition::Registry::embedded().expect("embedded workflows");
        let schemas = schemas(registry.all().map(|d| d.as_ref())).expect("one shape per type");
        let credit = &schemas[&("credit_record".to_owned(), 1)];
        let kinds = &credit["properties"]["data"]["properties"]["record_type"]["enum"];
        assert_eq!(kinds, &serde_json::json!(["commitment_fulfilled", "dishonesty", "commitment_not_fulfilled"]));
        let record = &schemas[&("approval_record".to_owned(), 1)]["properties"]["data"]["properties"];
        assert_eq!(
            record["supervisors"]["items"]["required"],
            serde_json::json!(["department", "office", "office_admin_mobile"])
        );
        assert_eq!(record["licensed_at"]["type"], serde_json::json!(["string", "null"]));
        assert!(schemas.contains_key(&("licence_revoked".to_owned(), 1)));
    }

    #[test]
    fn the_schemas_in_the_repository_are_the_generated_ones() {
        let registry = crate::definition::Registry::embedded().expect("embedded workflows");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
        let mut stale = Vec::new();
        let generated = schemas(registry.all().map(|d| d.as_ref())).expect("one shape per type");
        for ((kind, version), schema) in &generated {
            let path = dir.join(file_name(kind, *version));
            let want = format!("{}\n", serde_json::to_string_pretty(schema).expect("json"));
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                stale.push(path.display().to_string());
            }
        }
        let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert!(
            stale.is_empty() && files == generated.len(),
            "docs/schemas is not what the workflows declare ({stale:?}; {files} files for {} types): run `cargo run -- workflow schemas --out docs/schemas`",
            generated.len()
        );
    }
}
