//! The organisation and the catalogs (目录清单, DOMAIN.md §1–§6): who approves and who
//! supervises what.
//!
//! Ten kinds, each a flat table kept as a whole and versioned: every import of a kind that
//! changes it is a new version with who, when, a comment and what changed (rows added,
//! removed, changed, by key).
//!
//! | kind | key | holds |
//! |---|---|---|
//! | `regions` | `code` | regions (city → county/district) and each region's administrator |
//! | `departments` | `code` | departments with their side (`approval` / `supervision`) |
//! | `offices` | `code` | offices (处室) with their office administrator's name and mobile |
//! | `inspectors` | `code` | law-enforcement inspectors, by office |
//! | `approval_items` | `code` | approval items (审批事项), by approving department |
//! | `handling_items` | `code` | business handling items (业务办理项) of approval items |
//! | `supervision_items` | `code` | supervision items (监管事项), by supervising department |
//! | `supervision_subitems` | `code` | their sub-items (子项) |
//! | `linkage` | `handling_item`, `office` | the linkage catalog: handling item → supervising department, office, sub-item |
//! | `commitment` | `approval_item` | the commitment catalog: allowed scenarios, default period |
//!
//! This module owns the kinds and their schemas, the snapshot in force ([`Catalogs`], with
//! the lookups AcceptCase and the spot checks need) and its holder ([`Live`]); `import` owns
//! reading CSV and JSON files, validating them row by row against the rest of the catalogs,
//! and the difference between two versions. The writer stores versions; nothing here does
//! I/O.

pub mod import;
pub mod submit;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

pub use import::{import, Change, ImportFile, Imported, RowError};

/// A catalog kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Regions.
    Regions,
    /// Departments.
    Departments,
    /// Offices.
    Offices,
    /// Inspectors.
    Inspectors,
    /// Approval items.
    ApprovalItems,
    /// Business handling items.
    HandlingItems,
    /// Supervision items.
    SupervisionItems,
    /// Supervision sub-items.
    SupervisionSubitems,
    /// The linkage catalog.
    Linkage,
    /// The commitment catalog.
    Commitment,
}

/// Every kind, in dependency order (a kind refers only to kinds before it).
pub const KINDS: [Kind; 10] = [
    Kind::Regions,
    Kind::Departments,
    Kind::Offices,
    Kind::Inspectors,
    Kind::ApprovalItems,
    Kind::HandlingItems,
    Kind::SupervisionItems,
    Kind::SupervisionSubitems,
    Kind::Linkage,
    Kind::Commitment,
];

/// How a field's text is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// An identifier: 1–64 letters, digits, `-`, `_`, `.`.
    Code,
    /// A six-digit region code (GB/T 2260).
    Region,
    /// Free text of at most this many characters.
    Text(usize),
    /// A mainland mobile number.
    Mobile,
    /// `approval` or `supervision`.
    Side,
    /// Commitment scenarios, separated by `;`.
    Scenarios,
    /// A whole number of working days, 1–365.
    Days,
    /// The code of a row of another kind.
    Ref(Kind),
}

/// One column of a kind.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Column name (CSV header, JSON key).
    pub name: &'static str,
    /// How it is checked.
    pub ty: FieldType,
    /// Whether it may be empty.
    pub required: bool,
}

/// A [`Field`] as a constant expression, so that the schemas are `'static` tables.
macro_rules! f {
    ($name:literal, $ty:expr, $required:literal) => {
        Field { name: $name, ty: $ty, required: $required }
    };
}

impl Kind {
    /// The name in files, commands and the API.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Regions => "regions",
            Kind::Departments => "departments",
            Kind::Offices => "offices",
            Kind::Inspectors => "inspectors",
            Kind::ApprovalItems => "approval_items",
            Kind::HandlingItems => "handling_items",
            Kind::SupervisionItems => "supervision_items",
            Kind::SupervisionSubitems => "supervision_subitems",
            Kind::Linkage => "linkage",
            Kind::Commitment => "commitment",
        }
    }

    /// The kind a name (or a file name such as `offices.csv`) stands for.
    pub fn parse(name: &str) -> Option<Kind> {
        let stem = name.rsplit(['/', '\\']).next().unwrap_or(name);
        let stem = stem.split('.').next().unwrap_or(stem).replace('-', "_");
        KINDS.into_iter().find(|k| k.name() == stem)
    }

    /// Its columns, in CSV order.
    pub fn fields(self) -> &'static [Field] {
        use FieldType::*;
        match self {
            Kind::Regions => &[
                f!("code", Region, true),
                f!("name", Text(100), true),
                f!("parent", Ref(Kind::Regions), false),
                f!("admin_name", Text(100), true),
                f!("admin_mobile", Mobile, true),
            ],
            Kind::Departments => &[
                f!("code", Code, true),
                f!("name", Text(200), true),
                f!("region", Ref(Kind::Regions), true),
                f!("side", Side, true),
            ],
            Kind::Offices => &[
                f!("code", Code, true),
                f!("department", Ref(Kind::Departments), true),
                f!("name", Text(200), true),
                f!("admin_name", Text(100), true),
                f!("admin_mobile", Mobile, true),
            ],
            Kind::Inspectors => {
                &[f!("code", Code, true), f!("office", Ref(Kind::Offices), true), f!("name", Text(100), true)]
            }
            Kind::ApprovalItems => {
                &[f!("code", Code, true), f!("name", Text(200), true), f!("department", Ref(Kind::Departments), true)]
            }
            Kind::HandlingItems => &[
                f!("code", Code, true),
                f!("approval_item", Ref(Kind::ApprovalItems), true),
                f!("name", Text(200), true),
            ],
            Kind::SupervisionItems => {
                &[f!("code", Code, true), f!("name", Text(200), true), f!("department", Ref(Kind::Departments), true)]
            }
            Kind::SupervisionSubitems => &[
                f!("code", Code, true),
                f!("supervision_item", Ref(Kind::SupervisionItems), true),
                f!("name", Text(200), true),
            ],
            Kind::Linkage => &[
                f!("handling_item", Ref(Kind::HandlingItems), true),
                f!("department", Ref(Kind::Departments), true),
                f!("office", Ref(Kind::Offices), true),
                f!("subitem", Ref(Kind::SupervisionSubitems), true),
            ],
            Kind::Commitment => &[
                f!("approval_item", Ref(Kind::ApprovalItems), true),
                f!("scenarios", Scenarios, true),
                f!("period_working_days", Days, false),
            ],
        }
    }

    /// The columns that identify a row.
    pub fn key(self) -> &'static [&'static str] {
        match self {
            Kind::Linkage => &["handling_item", "office"],
            Kind::Commitment => &["approval_item"],
            _ => &["code"],
        }
    }

    /// The key of `row` as one text (`a|b` for a two-column key).
    pub fn key_of(self, row: &Row) -> String {
        self.key().iter().map(|k| row.get(*k).map_or("", String::as_str)).collect::<Vec<_>>().join("|")
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One row: column → value (empty optional columns are absent).
pub type Row = BTreeMap<String, String>;

/// One version of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The kind.
    pub kind: Kind,
    /// 1, 2, …; 0 for a kind never imported.
    pub version: u32,
    /// Who imported it (the verified principal's subject).
    pub actor: String,
    /// When (engine time, UTC ms).
    pub at: i64,
    /// The importer's comment.
    pub comment: String,
    /// What changed from the version before.
    pub changes: Change,
    /// The rows, in key order.
    pub rows: Vec<Row>,
}

/// The scenarios of the commitment catalog, as named in files and case variables.
pub const SCENARIOS: [&str; 3] = ["material_deferral", "material_verification", "post_approval_verification"];

/// One supervising office for a handling item, from the linkage catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The supervising department's code.
    pub department: String,
    /// The office's code.
    pub office: String,
    /// The supervision sub-item's code.
    pub subitem: String,
}

/// The catalogs in force: the newest version of every kind, with indexes.
#[derive(Debug, Clone, Default)]
pub struct Catalogs {
    versions: BTreeMap<Kind, Arc<Version>>,
    by_key: BTreeMap<Kind, BTreeMap<String, usize>>,
    links: BTreeMap<String, Vec<Link>>,
}

impl Catalogs {
    /// The catalogs made of these versions (the newest of each kind; kinds missing are empty).
    pub fn new(versions: impl IntoIterator<Item = Version>) -> Self {
        Self::of(versions.into_iter().map(Arc::new))
    }

    /// These catalogs with `newer` versions in place of theirs; the kinds not given are shared,
    /// not copied.
    pub fn with(&self, newer: &[Version]) -> Self {
        let mut all = self.versions.clone();
        for v in newer {
            all.insert(v.kind, Arc::new(v.clone()));
        }
        Self::of(all.into_values())
    }

    fn of(versions: impl IntoIterator<Item = Arc<Version>>) -> Self {
        let mut out = Catalogs::default();
        for v in versions {
            let keys = v.rows.iter().enumerate().map(|(i, r)| (v.kind.key_of(r), i)).collect();
            out.by_key.insert(v.kind, keys);
            out.versions.insert(v.kind, v);
        }
        if let Some(linkage) = out.versions.get(&Kind::Linkage).cloned() {
            for row in &linkage.rows {
                let get = |k: &str| row.get(k).cloned().unwrap_or_default();
                out.links.entry(get("handling_item")).or_default().push(Link {
                    department: get("department"),
                    office: get("office"),
                    subitem: get("subitem"),
                });
            }
        }
        out
    }

    /// The version in force of a kind (0: never imported).
    pub fn version(&self, kind: Kind) -> u32 {
        self.versions.get(&kind).map_or(0, |v| v.version)
    }

    /// The stored version of a kind in force, if it was ever imported.
    pub fn current(&self, kind: Kind) -> Option<&Arc<Version>> {
        self.versions.get(&kind)
    }

    /// The rows of a kind.
    pub fn rows(&self, kind: Kind) -> &[Row] {
        self.versions.get(&kind).map_or(&[], |v| v.rows.as_slice())
    }

    /// A row by its key.
    pub fn get(&self, kind: Kind, key: &str) -> Option<&Row> {
        let i = *self.by_key.get(&kind)?.get(key)?;
        self.versions.get(&kind)?.rows.get(i)
    }

    /// A column of a row by its key.
    pub fn field(&self, kind: Kind, key: &str, field: &str) -> Option<&str> {
        self.get(kind, key)?.get(field).map(String::as_str)
    }

    /// Whether approval items are catalogued at all: until then AcceptCase trusts the request
    /// (and says so on every case it accepts).
    pub fn in_force(&self) -> bool {
        self.version(Kind::ApprovalItems) > 0
    }

    /// The supervising offices the linkage catalog names for a handling item.
    pub fn links(&self, handling_item: &str) -> &[Link] {
        self.links.get(handling_item).map_or(&[], Vec::as_slice)
    }

    /// The handling items linked to any sub-item of a supervision item.
    pub fn handling_items_of(&self, supervision_item: &str) -> BTreeSet<String> {
        self.links
            .iter()
            .filter(|(_, links)| {
                links.iter().any(|l| {
                    self.field(Kind::SupervisionSubitems, &l.subitem, "supervision_item") == Some(supervision_item)
                })
            })
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Every name the department `given` is known by: `given` itself and, when the organisation
    /// catalog holds it by code or by name, its code and its name. A case accepted through the
    /// catalogs carries codes; one accepted before them, or a token's claim, may carry a name.
    /// A name is looked up only among departments whose region `in_scope` admits, and only when
    /// one department there bears it (names repeat across regions; codes do not).
    pub fn department_names(&self, given: &str, in_scope: impl Fn(&str) -> bool) -> Vec<String> {
        let named_in_scope = |r: &Row| in_scope(r.get("region").map_or("", String::as_str));
        self.known_as(Kind::Departments, given, |_| true, named_in_scope)
    }

    /// Every name the office `given` is known by, as [`Catalogs::department_names`]: with
    /// `departments` (each by all its names), it is looked up among their offices only.
    pub fn office_names(&self, given: &str, departments: Option<&[String]>) -> Vec<String> {
        let ours = |row: &Row| departments.is_none_or(|ds| ds.iter().any(|d| row.get("department") == Some(d)));
        self.known_as(Kind::Offices, given, ours, ours)
    }

    /// `given`, and the other name of the one row of `kind` it stands for: the row whose code
    /// it is (if `by_code` admits it) gives its name, else the only row that `by_name` admits
    /// and that bears it as its name gives its code.
    fn known_as(
        &self,
        kind: Kind,
        given: &str,
        by_code: impl Fn(&Row) -> bool,
        by_name: impl Fn(&Row) -> bool,
    ) -> Vec<String> {
        let mut names = vec![given.to_owned()];
        let field = |row: &Row, f: &str| row.get(f).cloned().unwrap_or_default();
        if let Some(row) = self.get(kind, given).filter(|r| by_code(r)) {
            names.push(field(row, "name"));
        } else {
            let mut named =
                self.rows(kind).iter().filter(|r| r.get("name").map(String::as_str) == Some(given) && by_name(r));
            if let (Some(row), None) = (named.next(), named.next()) {
                names.push(field(row, "code"));
            }
        }
        names.retain(|n| !n.is_empty());
        names.dedup();
        names
    }

    /// The inspectors of an office, by code.
    pub fn inspectors(&self, office: &str) -> Vec<&Row> {
        self.rows(Kind::Inspectors).iter().filter(|r| r.get("office").map(String::as_str) == Some(office)).collect()
    }

    /// The first region these catalogs hold that is not under `prefix` (a region scope): who
    /// imports catalogs must hold every region they hold, so that a county's administrator
    /// cannot replace a city's catalogs — whatever the import itself names.
    pub fn region_outside(&self, prefix: &str) -> Option<&str> {
        region_outside(self.rows(Kind::Regions), prefix)
    }

    /// The region whose administrator hears about a problem in `region`: the region itself if
    /// catalogued, else the nearest catalogued parent by code (county → city → province).
    pub fn region_admin(&self, region: &str) -> Option<&Row> {
        let candidates = [
            region.to_owned(),
            format!("{}00", &region[..4.min(region.len())]),
            format!("{}0000", &region[..2.min(region.len())]),
        ];
        candidates.iter().find_map(|c| self.get(Kind::Regions, c))
    }

    /// `kind=version` for every kind in force, for a case to keep.
    pub fn versions_text(&self, kinds: &[Kind]) -> String {
        kinds.iter().map(|k| format!("{k}={}", self.version(*k))).collect::<Vec<_>>().join(",")
    }

    /// Every stored version in force.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Version>> {
        self.versions.values()
    }
}

/// The first region code among `rows` (of [`Kind::Regions`]) that is not under `prefix`.
pub fn region_outside<'a>(rows: impl IntoIterator<Item = &'a Row>, prefix: &str) -> Option<&'a str> {
    rows.into_iter().filter_map(|r| r.get("code")).map(String::as_str).find(|c| !c.starts_with(prefix))
}

/// The example catalog of `ops/examples/catalog`, embedded: what the demo imports and what the
/// tests start from (the files are the documentation's examples too, so all three agree).
pub fn example_files() -> Vec<ImportFile> {
    macro_rules! file {
        ($name:literal) => {
            ImportFile {
                name: concat!($name, ".csv").into(),
                kind: None,
                content: include_str!(concat!("../../../ops/examples/catalog/", $name, ".csv")).into(),
            }
        };
    }
    vec![
        file!("regions"),
        file!("departments"),
        file!("offices"),
        file!("inspectors"),
        file!("approval_items"),
        file!("handling_items"),
        file!("supervision_items"),
        file!("supervision_subitems"),
        file!("linkage"),
        file!("commitment"),
    ]
}

/// The catalogs in force, swapped whole when an import commits (readers never see half an
/// import).
#[derive(Debug, Default)]
pub struct Live(RwLock<Arc<Catalogs>>);

impl Live {
    /// Holding `catalogs`.
    pub fn new(catalogs: Catalogs) -> Self {
        Live(RwLock::new(Arc::new(catalogs)))
    }

    /// The catalogs in force now.
    pub fn current(&self) -> Arc<Catalogs> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `catalogs` in force.
    pub fn replace(&self, catalogs: Catalogs) {
        let next = Arc::new(catalogs);
        match self.0.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }
}
