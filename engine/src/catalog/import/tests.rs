//! Catalog files in and out on their own: every kind of bad row with its line, references across
//! kinds, versions and their differences, hostile files. The example catalog is the fixture.

use super::*;

fn example_files() -> Vec<ImportFile> {
    super::super::example_files()
}

fn example() -> Catalogs {
    let imported = import(&Catalogs::default(), &example_files(), "test", "seed", 0).expect("the example imports");
    Catalogs::new(imported.versions)
}

fn csv(name: &str, content: &str) -> ImportFile {
    ImportFile { name: name.into(), kind: None, content: content.into() }
}

#[test]
fn the_example_catalog_imports_as_version_one_of_every_kind() {
    let catalogs = example();
    for kind in KINDS {
        assert_eq!(catalogs.version(kind), 1, "{kind}");
    }
    assert!(catalogs.in_force());
    let links = catalogs.links("FOOD-PROD-NEW");
    assert_eq!(links.len(), 2);
    assert!(catalogs.links("FOOD-SALE-NEW").is_empty(), "the example leaves one item unlinked");
    assert_eq!(catalogs.field(Kind::Offices, "SJJ-FOOD", "admin_mobile"), Some("13900000021"));
    assert_eq!(
        catalogs.handling_items_of("SJ-FOOD-PROD").into_iter().collect::<Vec<_>>(),
        ["FOOD-PROD-CHG", "FOOD-PROD-NEW"]
    );
    assert_eq!(catalogs.region_admin("320706").and_then(|r| r.get("admin_name")).map(String::as_str), Some("李华"));
    assert_eq!(catalogs.region_admin("320703").and_then(|r| r.get("code")).map(String::as_str), Some("320700"));
}

#[test]
fn every_bad_row_is_reported_with_file_line_field_and_reason_and_nothing_is_imported() {
    let catalogs = example();
    let offices = csv(
        "offices.csv",
        "code,department,name,admin_name,admin_mobile\n\
         SJJ-FOOD,SJJ-320700,食品生产监督管理处,孙宇,13900000021\n\
         SJJ-NEW,NOPE,新设科室,钱一,1390000\n\
         SJJ-FOOD,SJJ-320700,重复一行,孙宇,13900000021\n\
         bad code!,SJJ-320700,X,Y,13900000099\n\
         WJW-PH,WJW-320700,公共卫生监督处,吴芳,13900000031\n\
         XF-INSP,XF-320700,防火监督处,郑浩,13900000041\n\
         SPJ-FOOD,SPJ-320700,食品许可处,,13900000011\n",
    );
    let errors = import(&catalogs, &[offices], "t", "", 1).expect_err("bad rows");
    let has = |line: usize, field: &str, needle: &str| {
        errors
            .iter()
            .any(|e| e.file == "offices.csv" && e.line == line && e.field == field && e.reason.contains(needle))
    };
    assert!(has(3, "department", "NOPE is not in departments"), "{errors:#?}");
    assert!(has(3, "admin_mobile", "not a mainland mobile number"), "{errors:#?}");
    assert!(has(4, "code", "given twice (first on line 2)"), "{errors:#?}");
    assert!(has(5, "code", "letters, digits"), "{errors:#?}");
    assert!(has(8, "admin_name", "required"), "{errors:#?}");
    // The inspectors in force of an office the file would leave out are reported too? No: every
    // office of the example is still there, so no row outside the file is named.
    assert!(errors.iter().all(|e| e.file == "offices.csv"), "{errors:#?}");
}

#[test]
fn removing_a_row_that_others_refer_to_names_the_rows_left_dangling() {
    let catalogs = example();
    let offices = csv(
        "offices.csv",
        "code,department,name,admin_name,admin_mobile\n\
         SPJ-FOOD,SPJ-320700,食品许可处,陈杰,13900000011\n\
         WJW-PH,WJW-320700,公共卫生监督处,吴芳,13900000031\n\
         XF-INSP,XF-320700,防火监督处,郑浩,13900000041\n",
    );
    let errors = import(&catalogs, &[offices], "t", "", 1).expect_err("SJJ-FOOD is still used");
    assert!(errors.iter().any(|e| e.file == "inspectors v1 (in force)" && e.field == "office"), "{errors:#?}");
    assert!(errors.iter().any(|e| e.file == "linkage v1 (in force)" && e.reason.contains("SJJ-FOOD")), "{errors:#?}");
}

#[test]
fn sides_and_linkage_are_checked_across_kinds() {
    let catalogs = example();
    let linkage = csv(
        "linkage.csv",
        "handling_item,department,office,subitem\n\
         FOOD-PROD-NEW,SPJ-320700,SPJ-FOOD,SJ-FOOD-PROD-01\n\
         FOOD-PROD-NEW,SJJ-320700,WJW-PH,SJ-FOOD-PROD-01\n\
         PUB-VENUE-NEW,WJW-320700,WJW-PH,XF-SAFETY-01\n",
    );
    let errors = import(&catalogs, &[linkage], "t", "", 1).expect_err("bad links");
    let has = |line: usize, field: &str, needle: &str| {
        errors.iter().any(|e| e.line == line && e.field == field && e.reason.contains(needle))
    };
    assert!(has(2, "department", "approval side"), "{errors:#?}");
    assert!(has(3, "office", "belongs to WJW-320700"), "{errors:#?}");
    assert!(has(4, "subitem", "XF-320700"), "{errors:#?}");
    // FOOD-PROD-CHG lost its link while FOOD-PROD allows post-approval verification.
    assert!(
        errors.iter().any(|e| e.file == "commitment v1 (in force)" && e.field == "scenarios"),
        "post-approval items must stay linked: {errors:#?}"
    );
}

#[test]
fn a_changed_import_is_a_new_version_with_its_changes_and_an_unchanged_one_is_not() {
    let catalogs = example();
    let update = ImportFile {
        name: "catalog-update.json".into(),
        kind: None,
        content: include_str!("../../../../ops/examples/catalog-update.json").into(),
    };
    let imported = import(&catalogs, &[update], "admin", "link FOOD-SALE-NEW", 5).expect("valid update");
    let by_kind: BTreeMap<Kind, &Version> = imported.versions.iter().map(|v| (v.kind, v)).collect();
    let linkage = by_kind[&Kind::Linkage];
    assert_eq!(linkage.version, 2);
    assert_eq!(linkage.changes.added, ["FOOD-SALE-NEW|SJJ-FOOD"]);
    assert!(linkage.changes.removed.is_empty() && linkage.changes.changed.is_empty());
    assert_eq!(linkage.actor, "admin");
    assert_eq!(by_kind[&Kind::SupervisionSubitems].changes.added, ["SJ-FOOD-SALE-01"]);
    // In force after it: the new versions, the other kinds shared with the set before.
    let after = catalogs.with(&imported.versions);
    assert_eq!(after.version(Kind::Linkage), 2);
    assert_eq!(after.links("FOOD-SALE-NEW").len(), 1);
    assert_eq!(after.version(Kind::Offices), 1);
    let shared = |c: &Catalogs| c.current(Kind::Offices).cloned().expect("offices");
    assert!(std::sync::Arc::ptr_eq(&shared(&catalogs), &shared(&after)), "an unchanged kind is not copied");

    let again = import(&catalogs, &example_files()[..2], "admin", "", 6).expect("same rows");
    assert!(again.versions.is_empty());
    assert_eq!(again.unchanged, [Kind::Regions, Kind::Departments]);

    let renamed = csv(
        "regions.csv",
        "code,name,parent,admin_name,admin_mobile\n320700,连云港市人民政府,,王敏,13900000001\n\
         320706,海州区,320700,李华,13900000002\n320722,东海县,320700,赵磊,13900000003\n",
    );
    let v2 = import(&catalogs, &[renamed], "admin", "", 7).expect("rename");
    let change = &v2.versions[0].changes;
    assert_eq!(change.changed["320700"]["name"], ("连云港市".to_owned(), "连云港市人民政府".to_owned()));
}

#[test]
fn json_rows_are_reported_on_their_own_lines() {
    let catalogs = example();
    let text = "[\n  {\"code\": \"320700\", \"name\": \"L\", \"admin_name\": \"W\", \"admin_mobile\": \"13900000001\"},\n  {\"code\": \"12\", \"name\": \"X\", \"admin_name\": \"W\", \"admin_mobile\": \"13900000001\"},\n  {\"code\": \"320706\", \"nmae\": \"typo\"}\n]";
    let errors = import(&catalogs, &[csv("regions.json", text)], "t", "", 1).expect_err("bad rows");
    assert!(errors.iter().any(|e| e.line == 3 && e.field == "code"), "{errors:#?}");
    assert!(
        errors.iter().any(|e| e.line == 4 && e.field == "nmae" && e.reason.contains("unknown column")),
        "{errors:#?}"
    );
}

#[test]
fn hostile_files_are_refused_not_panicked_on() {
    let catalogs = example();
    for (name, content) in [
        ("offices.csv", "\"unterminated\n"),
        ("offices.csv", ""),
        ("offices.csv", "code,department\n\u{202e}x,y\n"),
        ("offices.json", "{\"offices\": 5}"),
        ("offices.json", "[1, \"x\", null]"),
        ("offices.json", "{"),
        ("unknown.csv", "a,b\n1,2\n"),
        ("bundle.json", "{\"nonsense\": []}"),
    ] {
        let errors = import(&catalogs, &[csv(name, content)], "t", "", 1);
        assert!(errors.is_err(), "{name}: {content:?} was imported");
    }
    let two =
        [csv("offices.csv", include_str!("../../../../ops/examples/catalog/offices.csv")), csv("offices.csv", "")];
    assert!(import(&catalogs, &two, "t", "", 1).is_err(), "one kind twice");
    let many: String = std::iter::once("code,name,parent,admin_name,admin_mobile\n".to_owned())
        .chain((0..MAX_ROWS + 1).map(|i| format!("32{i:04},n,,a,13900000001\n")))
        .collect();
    let errors = import(&catalogs, &[csv("regions.csv", &many)], "t", "", 1).expect_err("too many rows");
    assert!(errors.len() <= MAX_ERRORS + 1, "the error list is capped: {}", errors.len());
}

#[test]
fn a_department_and_an_office_are_known_by_code_and_by_name() {
    let catalogs = example();
    let anywhere = |_: &str| true;
    assert_eq!(catalogs.department_names("SJJ-320700", anywhere), ["SJJ-320700", "连云港市市场监督管理局"]);
    assert_eq!(catalogs.department_names("连云港市市场监督管理局", anywhere), ["连云港市市场监督管理局", "SJJ-320700"]);
    // A name looked up outside the scope's regions, or not catalogued, is only itself.
    assert_eq!(
        catalogs.department_names("连云港市市场监督管理局", |r: &str| r.starts_with("3208")),
        ["连云港市市场监督管理局"]
    );
    assert_eq!(catalogs.department_names("市场监管局", anywhere), ["市场监管局"]);
    let sjj = catalogs.department_names("SJJ-320700", anywhere);
    assert_eq!(catalogs.office_names("食品生产监督管理处", Some(&sjj)), ["食品生产监督管理处", "SJJ-FOOD"]);
    assert_eq!(catalogs.office_names("SJJ-FOOD", Some(&sjj)), ["SJJ-FOOD", "食品生产监督管理处"]);
    // Another department's office is not this department's, by code or by name.
    assert_eq!(catalogs.office_names("防火监督处", Some(&sjj)), ["防火监督处"]);
    assert_eq!(catalogs.office_names("XF-INSP", Some(&sjj)), ["XF-INSP"]);
    assert_eq!(catalogs.office_names("防火监督处", None), ["防火监督处", "XF-INSP"]);
}

#[test]
fn a_name_two_departments_bear_stands_for_neither() {
    let departments = csv(
        "departments.csv",
        "code,name,region,side\n\
         SJJ-320706,市场监督管理局,320706,supervision\n\
         SJJ-320722,市场监督管理局,320722,supervision\n",
    );
    let regions = example_files().into_iter().find(|f| f.name == "regions.csv").expect("regions");
    let imported = import(&Catalogs::default(), &[regions, departments], "t", "", 0).expect("imports");
    let catalogs = Catalogs::new(imported.versions);
    assert_eq!(catalogs.department_names("市场监督管理局", |_: &str| true), ["市场监督管理局"]);
    // Within one county's scope the name is unique again.
    assert_eq!(
        catalogs.department_names("市场监督管理局", |r: &str| r.starts_with("320706")),
        ["市场监督管理局", "SJJ-320706"]
    );
}
