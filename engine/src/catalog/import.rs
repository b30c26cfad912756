//! Importing catalog files: CSV or JSON in, new [`Version`]s out — or every bad row, each with
//! its file, line, field and reason, and nothing imported.
//!
//! A file holds one kind whole (the kind is named by the caller or by the file's name, such
//! as `offices.csv`); a JSON file may instead be a bundle `{"regions": [...], "offices": [...]}`
//! of several kinds. Several files are one import: references between them resolve, and
//! either every kind that changed gets a new version or none does. Rows are checked on their
//! own (required columns, codes, mobiles, sides, scenarios), then against the catalogs as they
//! would be after the import (duplicate keys, references, sides, the linkage of
//! post-approval-verification items) — so an import that would leave a row of another kind
//! pointing at nothing is refused too, naming that row.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Catalogs, FieldType, Kind, Row, Version, KINDS, SCENARIOS};

/// Most rows a file may hold.
pub const MAX_ROWS: usize = 100_000;
/// Most errors reported; the rest are counted.
pub const MAX_ERRORS: usize = 500;

/// One file to import.
#[derive(Debug, Clone)]
pub struct ImportFile {
    /// Its name, for error messages and (without `kind`) for its kind and format.
    pub name: String,
    /// The kind it holds; `None`: from the name, or a JSON bundle.
    pub kind: Option<Kind>,
    /// The text.
    pub content: String,
}

/// One problem with one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowError {
    /// The file (or `<kind> v<N> (in force)` for a row the import did not bring).
    pub file: String,
    /// 1-based line; 0 when the problem is the file itself.
    pub line: usize,
    /// The column.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.field.is_empty()) {
            (0, true) => write!(f, "{}: {}", self.file, self.reason),
            (0, false) => write!(f, "{}: {}: {}", self.file, self.field, self.reason),
            (l, true) => write!(f, "{}:{l}: {}", self.file, self.reason),
            (l, false) => write!(f, "{}:{l}: {}: {}", self.file, self.field, self.reason),
        }
    }
}

/// What one version changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Keys of rows added.
    pub added: Vec<String>,
    /// Keys of rows removed.
    pub removed: Vec<String>,
    /// Rows changed: key → column → (old, new).
    pub changed: BTreeMap<String, BTreeMap<String, (String, String)>>,
}

impl Change {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// `+2 −1 ~3`.
    pub fn summary(&self) -> String {
        format!("+{} -{} ~{}", self.added.len(), self.removed.len(), self.changed.len())
    }
}

/// The outcome of an import that passed.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The new versions (kinds whose rows changed).
    pub versions: Vec<Version>,
    /// Kinds in the import whose rows are the same as the version in force.
    pub unchanged: Vec<Kind>,
}

/// Where a row came from.
#[derive(Debug, Clone)]
struct Origin {
    file: String,
    line: usize,
}

struct Errors(Vec<RowError>, usize);

impl Errors {
    fn push(&mut self, origin: &Origin, field: &str, reason: impl Into<String>) {
        if self.0.len() < MAX_ERRORS {
            self.0.push(RowError {
                file: origin.file.clone(),
                line: origin.line,
                field: field.to_owned(),
                reason: reason.into(),
            });
        } else {
            self.1 += 1;
        }
    }

    fn file(&mut self, file: &str, reason: impl Into<String>) {
        self.push(&Origin { file: file.to_owned(), line: 0 }, "", reason);
    }

    fn finish(mut self) -> Vec<RowError> {
        if self.1 > 0 {
            self.0.push(RowError {
                file: String::new(),
                line: 0,
                field: String::new(),
                reason: format!("and {} more errors", self.1),
            });
        }
        self.0
    }
}

/// Reads, checks and versions an import against the catalogs in force. `Err` lists every
/// problem found; nothing of the import may then be stored.
pub fn import(
    current: &Catalogs,
    files: &[ImportFile],
    actor: &str,
    comment: &str,
    now: i64,
) -> Result<Imported, Vec<RowError>> {
    let mut errors = Errors(Vec::new(), 0);
    if files.is_empty() {
        errors.file("import", "no file given");
        return Err(errors.finish());
    }
    let mut incoming: BTreeMap<Kind, (String, Vec<(Row, Origin)>)> = BTreeMap::new();
    for file in files {
        for (kind, rows) in read_file(file, &mut errors) {
            if let Some((first, _)) = incoming.get(&kind) {
                errors.file(&file.name, format!("{kind} is also in {first}; give each kind once"));
                continue;
            }
            incoming.insert(kind, (file.name.clone(), rows));
        }
    }
    // The catalogs as they would be: imported kinds replaced, the rest as in force.
    let mut next: BTreeMap<Kind, Vec<(Row, Origin)>> = BTreeMap::new();
    for kind in KINDS {
        let rows = match incoming.get(&kind) {
            Some((_, rows)) => rows.clone(),
            None => {
                let label = format!("{kind} v{} (in force)", current.version(kind));
                current
                    .rows(kind)
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.clone(), Origin { file: label.clone(), line: i + 2 }))
                    .collect()
            }
        };
        next.insert(kind, rows);
    }
    check_all(&next, &mut errors);
    let errors = errors.finish();
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut out = Imported { versions: Vec::new(), unchanged: Vec::new() };
    for (kind, (_, rows)) in incoming {
        let mut rows: Vec<Row> = rows.into_iter().map(|(r, _)| r).collect();
        rows.sort_by_key(|r| kind.key_of(r));
        let old = current.rows(kind);
        let changes = diff(kind, old, &rows);
        if changes.is_empty() && current.version(kind) > 0 {
            out.unchanged.push(kind);
            continue;
        }
        out.versions.push(Version {
            kind,
            version: current.version(kind) + 1,
            actor: actor.to_owned(),
            at: now,
            comment: comment.to_owned(),
            changes,
            rows,
        });
    }
    Ok(out)
}

/// The difference between two row lists of a kind, by key.
pub fn diff(kind: Kind, old: &[Row], new: &[Row]) -> Change {
    let old: BTreeMap<String, &Row> = old.iter().map(|r| (kind.key_of(r), r)).collect();
    let new: BTreeMap<String, &Row> = new.iter().map(|r| (kind.key_of(r), r)).collect();
    let mut change = Change::default();
    for (key, row) in &new {
        match old.get(key) {
            None => change.added.push(key.clone()),
            Some(before) if before != row => {
                let mut fields = BTreeMap::new();
                for field in kind.fields() {
                    let (a, b) = (before.get(field.name), row.get(field.name));
                    if a != b {
                        fields.insert(
                            field.name.to_owned(),
                            (a.cloned().unwrap_or_default(), b.cloned().unwrap_or_default()),
                        );
                    }
                }
                change.changed.insert(key.clone(), fields);
            }
            Some(_) => {}
        }
    }
    change.removed = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
    change
}

fn read_file(file: &ImportFile, errors: &mut Errors) -> Vec<(Kind, Vec<(Row, Origin)>)> {
    let text = file.content.strip_prefix('\u{feff}').unwrap_or(&file.content);
    let lower = file.name.to_ascii_lowercase();
    let json = lower.ends_with(".json") || (!lower.ends_with(".csv") && text.trim_start().starts_with(['[', '{']));
    let named = file.kind.or_else(|| Kind::parse(&file.name));
    if json {
        return read_json(file, text, named, errors);
    }
    let Some(kind) = named else {
        errors.file(&file.name, unknown_kind());
        return Vec::new();
    };
    vec![(kind, read_csv(&file.name, text, kind, errors))]
}

fn unknown_kind() -> String {
    format!(
        "which catalog is this? Name the file after its kind ({}.csv, …) or give the kind",
        KINDS.iter().map(|k| k.name()).collect::<Vec<_>>().join(".csv, ")
    )
}

fn read_csv(name: &str, text: &str, kind: Kind, errors: &mut Errors) -> Vec<(Row, Origin)> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            errors.push(&Origin { file: name.to_owned(), line: 1 }, "", format!("the header does not read: {e}"));
            return Vec::new();
        }
    };
    let header_origin = Origin { file: name.to_owned(), line: 1 };
    let columns: Vec<String> = headers.iter().map(str::to_owned).collect();
    let mut ok = true;
    for (i, c) in columns.iter().enumerate() {
        if !kind.fields().iter().any(|f| f.name == c) {
            errors.push(&header_origin, c, format!("unknown column of {kind} (columns: {})", field_names(kind)));
            ok = false;
        } else if columns[..i].contains(c) {
            errors.push(&header_origin, c, "column given twice");
            ok = false;
        }
    }
    for field in kind.fields().iter().filter(|f| f.required) {
        if !columns.iter().any(|c| c == field.name) {
            errors.push(&header_origin, field.name, "required column is missing");
            ok = false;
        }
    }
    if !ok {
        return Vec::new();
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| usize::try_from(p.line()).unwrap_or(0));
                errors.push(&Origin { file: name.to_owned(), line }, "", format!("does not read as CSV: {e}"));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| usize::try_from(p.line()).unwrap_or(0));
        let origin = Origin { file: name.to_owned(), line };
        if rows.len() >= MAX_ROWS {
            errors.push(&origin, "", format!("more than {MAX_ROWS} rows"));
            break;
        }
        if record.len() != columns.len() {
            errors.push(&origin, "", format!("{} values for {} columns", record.len(), columns.len()));
            continue;
        }
        let mut row = Row::new();
        for (c, v) in columns.iter().zip(record.iter()) {
            if !v.is_empty() {
                row.insert(c.clone(), v.to_owned());
            }
        }
        rows.push((row, origin));
    }
    rows
}

fn field_names(kind: Kind) -> String {
    kind.fields().iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

/// The 1-based line of `part`, a slice of `text`.
fn line_of(text: &str, part: &str) -> usize {
    let offset = (part.as_ptr() as usize).saturating_sub(text.as_ptr() as usize).min(text.len());
    text.as_bytes()[..offset].iter().filter(|b| **b == b'\n').count() + 1
}

fn read_json(
    file: &ImportFile,
    text: &str,
    named: Option<Kind>,
    errors: &mut Errors,
) -> Vec<(Kind, Vec<(Row, Origin)>)> {
    let json_error = |errors: &mut Errors, e: serde_json::Error| {
        errors.push(&Origin { file: file.name.clone(), line: e.line() }, "", format!("is not valid JSON: {e}"));
    };
    if text.trim_start().starts_with('[') {
        let Some(kind) = named else {
            errors.file(&file.name, unknown_kind());
            return Vec::new();
        };
        return match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) => vec![(kind, json_rows(&file.name, text, kind, &items, errors))],
            Err(e) => {
                json_error(errors, e);
                Vec::new()
            }
        };
    }
    let bundle: BTreeMap<String, Vec<&RawValue>> = match serde_json::from_str(text) {
        Ok(b) => b,
        Err(e) => {
            json_error(errors, e);
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (name, items) in bundle {
        match Kind::parse(&name).filter(|k| k.name() == name) {
            Some(kind) => out.push((kind, json_rows(&file.name, text, kind, &items, errors))),
            None => errors.file(&file.name, format!("{name:?} is not a catalog kind ({})", field_kinds())),
        }
    }
    out
}

fn field_kinds() -> String {
    KINDS.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

fn json_rows(name: &str, text: &str, kind: Kind, items: &[&RawValue], errors: &mut Errors) -> Vec<(Row, Origin)> {
    let mut rows = Vec::new();
    for item in items {
        let origin = Origin { file: name.to_owned(), line: line_of(text, item.get()) };
        if rows.len() >= MAX_ROWS {
            errors.push(&origin, "", format!("more than {MAX_ROWS} rows"));
            break;
        }
        let object: BTreeMap<String, serde_json::Value> = match serde_json::from_str(item.get()) {
            Ok(o) => o,
            Err(_) => {
                errors.push(
                    &origin,
                    "",
                    format!("a row of {kind} must be an object with the columns {}", field_names(kind)),
                );
                continue;
            }
        };
        let mut row = Row::new();
        let mut ok = true;
        for (key, value) in object {
            if !kind.fields().iter().any(|f| f.name == key) {
                errors.push(&origin, &key, format!("unknown column of {kind} (columns: {})", field_names(kind)));
                ok = false;
                continue;
            }
            let text = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s.trim().to_owned(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Array(list) if key == "scenarios" => {
                    let parts: Option<Vec<&str>> = list.iter().map(serde_json::Value::as_str).collect();
                    match parts {
                        Some(p) => p.join(";"),
                        None => {
                            errors.push(&origin, &key, "must be a list of scenario names");
                            ok = false;
                            continue;
                        }
                    }
                }
                other => {
                    errors.push(&origin, &key, format!("must be text, not {other}"));
                    ok = false;
                    continue;
                }
            };
            if !text.is_empty() {
                row.insert(key, text);
            }
        }
        if ok {
            rows.push((row, origin));
        }
    }
    rows
}

fn check_code(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(format!("{v:?} may hold only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// The scenarios a `scenarios` column names, in order.
pub fn scenarios(v: &str) -> Vec<&str> {
    v.split([';', ',', '|']).map(str::trim).filter(|s| !s.is_empty()).collect()
}

fn check_value(ty: FieldType, v: &str) -> Result<(), String> {
    use crate::domain::{check_mobile, check_region, check_text};
    match ty {
        FieldType::Code | FieldType::Ref(_) => check_code(v),
        FieldType::Region => check_region(v),
        FieldType::Text(max) => check_text(v, max),
        FieldType::Mobile => check_mobile(v),
        FieldType::Side => match v {
            "approval" | "supervision" => Ok(()),
            _ => Err(format!("{v:?} is not a side: approval or supervision")),
        },
        FieldType::Scenarios => {
            let list = scenarios(v);
            if list.is_empty() {
                return Err("names no scenario".into());
            }
            for (i, s) in list.iter().enumerate() {
                if !SCENARIOS.contains(s) {
                    return Err(format!("{s:?} is not a scenario: {}", SCENARIOS.join(", ")));
                }
                if list[..i].contains(s) {
                    return Err(format!("{s} is named twice"));
                }
            }
            Ok(())
        }
        FieldType::Days => match v.parse::<u32>() {
            Ok(n) if (1..=365).contains(&n) => Ok(()),
            _ => Err(format!("{v:?} is not a whole number of working days from 1 to 365")),
        },
    }
}

type Next = BTreeMap<Kind, Vec<(Row, Origin)>>;

fn check_all(next: &Next, errors: &mut Errors) {
    // Keys of every kind, from rows that are valid on their own.
    let mut keys: BTreeMap<Kind, BTreeMap<String, &Row>> = BTreeMap::new();
    for (kind, rows) in next {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (row, origin) in rows {
            let mut ok = true;
            for field in kind.fields() {
                match row.get(field.name) {
                    None if field.required => {
                        errors.push(origin, field.name, "is required");
                        ok = false;
                    }
                    None => {}
                    Some(v) => {
                        if let Err(reason) = check_value(field.ty, v) {
                            errors.push(origin, field.name, reason);
                            ok = false;
                        }
                    }
                }
            }
            let key = kind.key_of(row);
            if let Some(first) = seen.get(&key) {
                errors.push(origin, kind.key()[0], format!("{key} is given twice (first on line {first})"));
                ok = false;
            } else {
                seen.insert(key.clone(), origin.line);
            }
            if ok {
                keys.entry(*kind).or_default().insert(key, row);
            }
        }
    }
    let get = |kind: Kind, key: &str| keys.get(&kind).and_then(|k| k.get(key)).copied();
    let side_of = |dept: &str| get(Kind::Departments, dept).and_then(|d| d.get("side")).map(String::as_str);
    for (kind, rows) in next {
        for (row, origin) in rows {
            // References.
            for field in kind.fields() {
                let (FieldType::Ref(to), Some(v)) = (field.ty, row.get(field.name)) else { continue };
                if get(to, v).is_none() {
                    errors.push(origin, field.name, format!("{v} is not in {to}"));
                }
            }
            let col = |n: &str| row.get(n).map(String::as_str).unwrap_or_default();
            match kind {
                Kind::Regions => {
                    let mut at = col("parent").to_owned();
                    for _ in 0..8 {
                        if at.is_empty() {
                            break;
                        }
                        if at == col("code") {
                            errors.push(origin, "parent", "a region cannot be its own ancestor");
                            break;
                        }
                        at = get(Kind::Regions, &at).and_then(|r| r.get("parent")).cloned().unwrap_or_default();
                    }
                }
                Kind::ApprovalItems | Kind::SupervisionItems => {
                    let want = if *kind == Kind::ApprovalItems { "approval" } else { "supervision" };
                    if let Some(side) = side_of(col("department")).filter(|s| *s != want) {
                        errors.push(
                            origin,
                            "department",
                            format!("{} is on the {side} side; {kind} belong to {want} departments", col("department")),
                        );
                    }
                }
                Kind::Linkage => {
                    let dept = col("department");
                    if let Some(side) = side_of(dept).filter(|s| *s != "supervision") {
                        errors.push(origin, "department", format!("{dept} is on the {side} side, not supervision"));
                    }
                    if let Some(office_dept) = get(Kind::Offices, col("office")).and_then(|o| o.get("department")) {
                        if office_dept != dept {
                            errors.push(
                                origin,
                                "office",
                                format!("{} belongs to {office_dept}, not {dept}", col("office")),
                            );
                        }
                    }
                    let item = get(Kind::SupervisionSubitems, col("subitem")).and_then(|s| s.get("supervision_item"));
                    if let Some(owner) =
                        item.and_then(|i| get(Kind::SupervisionItems, i)).and_then(|i| i.get("department"))
                    {
                        if owner != dept {
                            errors.push(
                                origin,
                                "subitem",
                                format!("{} is a sub-item of {owner}'s supervision item, not {dept}'s", col("subitem")),
                            );
                        }
                    }
                }
                Kind::Commitment => {
                    let list = scenarios(col("scenarios"));
                    if list.contains(&"post_approval_verification") {
                        let item = col("approval_item");
                        let handling: Vec<&String> = keys
                            .get(&Kind::HandlingItems)
                            .into_iter()
                            .flatten()
                            .filter(|(_, h)| h.get("approval_item").map(String::as_str) == Some(item))
                            .map(|(k, _)| k)
                            .collect();
                        let linked: BTreeSet<&str> = keys
                            .get(&Kind::Linkage)
                            .into_iter()
                            .flatten()
                            .filter_map(|(_, l)| l.get("handling_item").map(String::as_str))
                            .collect();
                        if handling.is_empty() {
                            errors.push(
                                origin,
                                "scenarios",
                                format!("post-approval verification: {item} has no handling item to link"),
                            );
                        }
                        for h in handling.into_iter().filter(|h| !linked.contains(h.as_str())) {
                            errors.push(
                                origin,
                                "scenarios",
                                format!("post-approval verification needs its items in the linkage catalog (§6); handling item {h} of {item} is not linked"),
                            );
                        }
                    }
                    if col("period_working_days").is_empty() {
                        continue;
                    }
                    if !list.contains(&"material_deferral") {
                        errors.push(origin, "period_working_days", "applies only to the material_deferral scenario");
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
