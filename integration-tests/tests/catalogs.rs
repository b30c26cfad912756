//! The organisation and catalogs, AcceptCase routed through them, the enterprise profile and
//! credit-graded spot checks — over real gRPC on loopback, with the server's virtual clock, on
//! SQLite (and on PostgreSQL with SHENGUAN_TEST_BACKEND=postgres).

use std::collections::BTreeMap;

use anyhow::Result;
use integration_tests::fixtures::{accept, catalogued, example_catalog, uscc};
use integration_tests::{TestServer, Who};
use shenguan::proto::{
    admin_service_client::AdminServiceClient, intake_service_client::IntakeServiceClient, CatalogFile,
    CatalogHistoryRequest, CompleteApprovalRequest, CreateSpotCheckPlanRequest, EndSpotCheckPlanRequest,
    ExportCatalogRequest, GetCaseRequest, GetEnterpriseProfileRequest, ImportCatalogsRequest,
    ListLinkageProblemsRequest, ListSpotCheckRunsRequest, RelinkCaseRequest, ReportSpotCheckResultRequest,
    RevokeApprovalRequest, Route, Scenario, Supervisor,
};
use tonic::Code;

fn file(name: &str, content: &str) -> CatalogFile {
    CatalogFile { name: name.into(), kind: String::new(), content: content.as_bytes().to_vec() }
}

fn import(files: Vec<CatalogFile>) -> ImportCatalogsRequest {
    ImportCatalogsRequest { files, comment: "test".into(), dry_run: false }
}

/// Accepts case `no` on catalogued handling item `item` for enterprise `code` of credit
/// `grade`, and licenses it (licence `JY-<no>`).
async fn licensed(server: &TestServer, no: &str, item: &str, code: &str, grade: &str) -> Result<()> {
    server.intake().accept_case(catalogued(no, item, code, grade)).await?;
    let licence = CompleteApprovalRequest {
        case_id: format!("320700/{no}"),
        license_no: format!("JY-{no}"),
        approval_opinion: "准予许可".into(),
        document_refs: vec![],
    };
    server.intake().complete_approval(licence).await?;
    Ok(())
}

fn example_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/examples").join(name);
    std::fs::read_to_string(path).expect("example file")
}

async fn export(server: &TestServer, kind: &str, version: u32) -> Result<String> {
    let reply = server
        .admin()
        .export_catalog(ExportCatalogRequest { kind: kind.into(), format: "csv".into(), version })
        .await?
        .into_inner();
    Ok(String::from_utf8(reply.content)?)
}

#[tokio::test]
async fn a_bad_import_reports_every_row_and_changes_nothing_and_a_good_one_is_a_new_version() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    let mut admin = server.admin();
    let first = admin.import_catalogs(example_catalog()).await?.into_inner();
    assert_eq!(first.versions.len(), 10, "every kind, version 1");
    assert!(first.versions.iter().all(|v| v.version == 1 && v.imported_by == "anonymous"), "{:?}", first.versions);
    let offices_v1 = export(&server, "offices", 0).await?;
    assert_eq!(offices_v1, example_file("catalog/offices.csv"), "an export is the file imported");

    // Two files, one of them bad: every problem named, nothing imported (not even the good one).
    let bad_offices = "code,department,name,admin_name,admin_mobile\n\
        SPJ-FOOD,SPJ-320700,食品许可处,陈杰,13900000011\n\
        SJJ-FOOD,NO-SUCH-DEPT,食品生产监督管理处,孙宇,139\n\
        WJW-PH,WJW-320700,公共卫生监督处,吴芳,13900000031\n\
        XF-INSP,XF-320700,防火监督处,,13900000041\n";
    let renamed_regions = example_file("catalog/regions.csv").replace("连云港市,", "连云港市人民政府,");
    let err = admin
        .import_catalogs(import(vec![file("regions.csv", &renamed_regions), file("offices.csv", bad_offices)]))
        .await
        .expect_err("bad rows");
    assert_eq!(err.code(), Code::InvalidArgument);
    let m = err.message();
    for needle in [
        "offices.csv:3: department: NO-SUCH-DEPT is not in departments",
        "offices.csv:3: admin_mobile:",
        "offices.csv:5: admin_name: is required",
        "nothing was imported",
    ] {
        assert!(m.contains(needle), "{needle:?} missing from:\n{m}");
    }
    let history = admin.catalog_history(CatalogHistoryRequest { kind: "regions".into() }).await?.into_inner();
    assert_eq!(history.versions.len(), 1, "the good file of a bad import is not imported either");
    assert_eq!(export(&server, "offices", 0).await?, offices_v1);

    // A dry run says what would change and stores nothing.
    let mut dry = import(vec![file("catalog-update.json", &example_file("catalog-update.json"))]);
    dry.dry_run = true;
    let would = admin.import_catalogs(dry).await?.into_inner();
    assert!(would.dry_run);
    assert_eq!(
        would.versions.iter().map(|v| (v.kind.as_str(), v.version)).collect::<Vec<_>>(),
        [("supervision_subitems", 2), ("linkage", 2)]
    );
    let linkage = admin.catalog_history(CatalogHistoryRequest { kind: "linkage".into() }).await?.into_inner();
    assert_eq!(linkage.versions.len(), 1, "a dry run stores nothing");

    // The update for real: new versions with what changed, who and why; the old one exports.
    let mut update = import(vec![file("catalog-update.json", &example_file("catalog-update.json"))]);
    update.comment = "link FOOD-SALE-NEW".into();
    let v2 = admin.import_catalogs(update).await?.into_inner();
    let linkage_v2 = v2.versions.iter().find(|v| v.kind == "linkage").expect("linkage v2");
    assert_eq!(linkage_v2.added, ["FOOD-SALE-NEW|SJJ-FOOD"]);
    let history = admin.catalog_history(CatalogHistoryRequest { kind: "linkage".into() }).await?.into_inner();
    assert_eq!(history.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(history.versions[1].comment, "link FOOD-SALE-NEW");
    assert_eq!(export(&server, "linkage", 1).await?, example_file("catalog/linkage.csv"));
    assert!(export(&server, "linkage", 0).await?.contains("FOOD-SALE-NEW,SJJ-320700,SJJ-FOOD,SJ-FOOD-SALE-01"));
    // The same rows again: no new version.
    let again = admin.import_catalogs(example_catalog()).await?.into_inner();
    assert!(again.unchanged.contains(&"regions".to_owned()));
    assert_eq!(
        again.versions.iter().map(|v| v.kind.as_str()).collect::<Vec<_>>(),
        ["supervision_subitems", "linkage"],
        "only the kinds the example differs in from what is in force"
    );

    // Hostile and malformed requests.
    for (req, field) in [
        (import(vec![]), "files"),
        (
            import(vec![CatalogFile {
                name: "offices.csv".into(),
                kind: String::new(),
                content: vec![0xff, 0xfe, 0x00],
            }]),
            "files[0].content",
        ),
        (import(vec![CatalogFile { name: "x.csv".into(), kind: "nonsense".into(), content: vec![] }]), "files[0].kind"),
        (import(vec![file("a\u{202e}.csv", "")]), "files[0].name"),
        (import((0..21).map(|i| file(&format!("f{i}.csv"), "")).collect()), "files"),
    ] {
        let err = admin.import_catalogs(req).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    // A large catalog passes (the one call allowed more than 1 MiB); more than 32 MiB does not,
    // nor a file over 16 MiB.
    let mut big = String::from("code,office,name\n");
    for i in 0..60_000 {
        big.push_str(&format!("INSP-{i:06},SJJ-FOOD,Inspector number {i:06} of the food office\n"));
    }
    assert!(big.len() > 2 * 1024 * 1024);
    let imported = admin.import_catalogs(import(vec![file("inspectors.csv", &big)])).await?.into_inner();
    assert_eq!(imported.versions[0].rows, 60_000);
    let err = admin
        .import_catalogs(import(vec![file("inspectors.csv", &"x".repeat(33 * 1024 * 1024))]))
        .await
        .expect_err("too large");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let err = admin
        .import_catalogs(import(vec![file("inspectors.csv", &"x".repeat(17 * 1024 * 1024))]))
        .await
        .expect_err("file too large");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("files[0].content"), "{}", err.message());
    let err = admin.import_catalogs(import(vec![file("unknown.csv", "a,b\n")])).await.expect_err("no kind");
    assert!(err.message().contains("which catalog is this"), "{}", err.message());
    let err = admin
        .export_catalog(ExportCatalogRequest { kind: "offices".into(), format: "xml".into(), version: 0 })
        .await
        .expect_err("format");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = admin
        .export_catalog(ExportCatalogRequest { kind: "offices".into(), format: "csv".into(), version: 9 })
        .await
        .expect_err("no such version");
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await
}

#[tokio::test]
async fn accept_case_takes_items_routes_supervisors_and_mobiles_from_the_catalogs() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    let mut intake = server.intake();
    // Before any catalog: the request is trusted, as before.
    let trusted = intake.accept_case(accept("PRE-1", Route::Normal, Scenario::Unspecified)).await?.into_inner();
    assert_eq!(trusted.case.expect("case").catalog_versions, "");
    server.admin().import_catalogs(example_catalog()).await?;

    let code = uscc("91320700MA1000001");
    let c = intake.accept_case(catalogued("C-1", "FOOD-PROD-NEW", &code, "A")).await?.into_inner().case.expect("case");
    assert_eq!(c.approval_department, "SPJ-320700", "from the approval item");
    assert_eq!(c.variables["supervisors"], "SJJ-320700/SJJ-FOOD; XF-320700/XF-INSP", "from the linkage catalog");
    assert!(c.variables["supervisors_json"].contains("13900000021"), "the office administrator's mobile");
    assert!(c.catalog_versions.contains("approval_items=1") && c.catalog_versions.contains("linkage=1"));
    assert!(!c.unlinked);

    // Unknown items are INVALID_ARGUMENT; routes the commitment catalog does not allow are
    // FAILED_PRECONDITION; nothing is written for either.
    let mut unknown = catalogued("C-2", "FOOD-PROD-NEW", &code, "A");
    unknown.approval_item_code = "NO-SUCH".into();
    let err = intake.accept_case(unknown).await.expect_err("unknown item");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("approval_item_code"), "{}", err.message());
    let mut mismatched = catalogued("C-2", "FOOD-PROD-NEW", &code, "A");
    mismatched.handling_item_code = "PUB-VENUE-NEW".into();
    let err = intake.accept_case(mismatched).await.expect_err("handling item of another item");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("handling_item_code"), "{}", err.message());
    let mut not_on_commitment = catalogued("C-2", "FOOD-SALE-NEW", &code, "A");
    not_on_commitment.route = Route::Commitment as i32;
    not_on_commitment.scenario = Scenario::MaterialVerification as i32;
    let err = intake.accept_case(not_on_commitment).await.expect_err("not in the commitment catalog");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let mut wrong_scenario = catalogued("C-2", "PUB-VENUE-NEW", &code, "A");
    wrong_scenario.route = Route::Commitment as i32;
    wrong_scenario.scenario = Scenario::MaterialDeferral as i32;
    wrong_scenario.deferred_materials = vec!["floor plan".into()];
    wrong_scenario.commitment_period_working_days = 5;
    let err = intake.accept_case(wrong_scenario).await.expect_err("scenario not allowed");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("material_verification"), "{}", err.message());
    let err = intake.get_case(GetCaseRequest { case_id: "320700/C-2".into() }).await.expect_err("nothing written");
    assert_eq!(err.code(), Code::NotFound);

    // The commitment catalog's default period: 20 working days from 28 September 2026.
    let mut deferral = catalogued("C-3", "FOOD-PROD-NEW", &code, "A");
    deferral.route = Route::Commitment as i32;
    deferral.scenario = Scenario::MaterialDeferral as i32;
    deferral.deferred_materials = vec!["fire safety certificate".into()];
    let c = intake.accept_case(deferral).await?.into_inner().case.expect("case");
    assert_eq!(c.state, "commitment_pending");
    assert_eq!(c.commitment_deadline, "2026-10-30", "20 working days, National Day skipped");
    server.stop().await
}

#[tokio::test]
async fn supervisors_against_the_linkage_need_the_override_right_which_is_recorded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server =
        TestServer::start_secured("2026-09-28T10:00:00+08:00", &dir.path().join("s.db"), |_| {}, |_| {}).await?;
    // A county's administrator may not replace the city's catalogs; the city's may.
    let county = Who::new("haizhou-admin", "region_admin", "320706", "", "");
    let err = AdminServiceClient::new(server.as_who(&county))
        .import_catalogs(example_catalog())
        .await
        .expect_err("the catalogs cover the whole city");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let admin_who = Who::new("city-admin", "region_admin", "320700", "", "");
    AdminServiceClient::new(server.as_who(&admin_who)).import_catalogs(example_catalog()).await?;
    // Nor with a complete set that names only the county's own region: every region of the
    // catalogs in force must be the importer's too.
    let mut county_only = example_catalog();
    for f in &mut county_only.files {
        let text = String::from_utf8(std::mem::take(&mut f.content))?;
        f.content = if f.name.starts_with("regions") {
            "code,name,parent,admin_name,admin_mobile\n320706,海州区,,李华,13900000002\n".into()
        } else {
            text.replace("320700", "320706").into_bytes()
        };
    }
    let dry = shenguan::proto::ImportCatalogsRequest { dry_run: true, ..county_only.clone() };
    AdminServiceClient::new(server.as_who(&admin_who)).import_catalogs(dry).await?;
    let err = AdminServiceClient::new(server.as_who(&county))
        .import_catalogs(county_only)
        .await
        .expect_err("the catalogs in force hold the city");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("region 320700"), "{}", err.message());
    let history = AdminServiceClient::new(server.as_who(&admin_who))
        .catalog_history(shenguan::proto::CatalogHistoryRequest { kind: "regions".into() })
        .await?
        .into_inner();
    assert_eq!(history.versions.len(), 1, "nothing was imported: {history:?}");
    let code = uscc("91320700MA1000002");
    let mut other = catalogued("O-1", "FOOD-PROD-NEW", &code, "A");
    other.supervisors = vec![Supervisor {
        department: "WJW-320700".into(),
        office: "WJW-PH".into(),
        office_admin_mobile: "13811112222".into(),
    }];
    let platform = Who::new("platform", "platform", "320700", "", "");
    let err = IntakeServiceClient::new(server.as_who(&platform)).accept_case(other.clone()).await.expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("override_linkage"), "{}", err.message());

    let mut trusted = Who::new("platform-2", "platform", "320700", "", "");
    trusted.roles.push("region_admin".into());
    let c =
        IntakeServiceClient::new(server.as_who(&trusted)).accept_case(other).await?.into_inner().case.expect("case");
    assert!(c.linkage_override.starts_with("by platform-2:"), "{}", c.linkage_override);
    assert!(c.linkage_override.contains("SJJ-320700/SJJ-FOOD; XF-320700/XF-INSP"), "{}", c.linkage_override);
    assert!(
        c.variables["supervisors_json"].contains("13900000031"),
        "the organisation's office administrator, not the request's mobile: {}",
        c.variables["supervisors_json"]
    );
    // Catalogs are not the platform's to change.
    let err = AdminServiceClient::new(server.as_who(&platform))
        .import_catalogs(example_catalog())
        .await
        .expect_err("no right");
    assert_eq!(err.code(), Code::PermissionDenied);
    server.stop().await
}

#[tokio::test]
async fn an_unlinked_item_is_accepted_flagged_escalated_listed_and_licensed_only_once_relinked() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    let mut admin = server.admin();
    admin.import_catalogs(example_catalog()).await?;
    let code = uscc("91320700MA1000003");
    let c = server
        .intake()
        .accept_case(catalogued("UL-1", "FOOD-SALE-NEW", &code, "B"))
        .await?
        .into_inner()
        .case
        .expect("accepted, not dropped");
    assert!(c.unlinked);
    assert_eq!(c.state, "awaiting_approval");
    let timeline =
        admin.get_timeline(shenguan::proto::GetTimelineRequest { case_id: c.case_id.clone() }).await?.into_inner();
    let escalation = timeline
        .entries
        .iter()
        .flat_map(|e| e.outbound.iter())
        .find(|m| m.channel == "escalation")
        .expect("an escalation in the outbox");
    assert_eq!(escalation.recipient, "13900000001", "the region administrator of 320700");
    assert!(escalation.text.contains("FOOD-SALE-NEW"));

    // An unlinked case revoked before its licence needs no supervisor: it leaves the list.
    server.intake().accept_case(catalogued("UL-2", "FOOD-SALE-NEW", &code, "B")).await?;
    server
        .intake()
        .revoke_approval(RevokeApprovalRequest {
            case_id: "320700/UL-2".into(),
            reason: "withdrawn".into(),
            basis: "application withdrawn".into(),
        })
        .await?;
    let problems = admin.list_linkage_problems(ListLinkageProblemsRequest::default()).await?.into_inner().problems;
    assert!(problems.iter().any(|p| p.kind == "unlinked_case" && p.case_id == "320700/UL-1"), "{problems:?}");
    assert!(!problems.iter().any(|p| p.case_id == "320700/UL-2"), "{problems:?}");
    assert!(problems.iter().any(|p| p.kind == "unlinked_item" && p.handling_item == "FOOD-SALE-NEW"), "{problems:?}");

    let licence = CompleteApprovalRequest {
        case_id: "320700/UL-1".into(),
        license_no: "JY1".into(),
        approval_opinion: "ok".into(),
        document_refs: vec![],
    };
    let err = server.intake().complete_approval(licence.clone()).await.expect_err("no supervisor");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("no supervising department"), "{}", err.message());
    let err = admin.relink_case(RelinkCaseRequest { case_id: "320700/UL-1".into() }).await.expect_err("still unlinked");
    assert_eq!(err.code(), Code::FailedPrecondition);

    admin.import_catalogs(import(vec![file("catalog-update.json", &example_file("catalog-update.json"))])).await?;
    let relinked = admin.relink_case(RelinkCaseRequest { case_id: "320700/UL-1".into() }).await?.into_inner();
    let case = relinked.case.expect("case");
    assert!(!case.unlinked);
    assert!(case.catalog_versions.contains("linkage=2"), "{}", case.catalog_versions);
    let licensed = server.intake().complete_approval(licence).await?.into_inner().case.expect("case");
    assert_eq!(licensed.state, "licensed");
    assert_eq!(licensed.tasks.len(), 1);
    let problems = admin.list_linkage_problems(ListLinkageProblemsRequest::default()).await?.into_inner().problems;
    assert!(problems.is_empty(), "{problems:?}");
    server.stop().await
}

#[tokio::test]
async fn the_enterprise_profile_holds_its_cases_tasks_results_revocations_credit_records_and_deadlines() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    server.admin().import_catalogs(example_catalog()).await?;
    let code = uscc("91320700MA1000004");
    let mut intake = server.intake();
    // A deferral case that goes overdue and is revoked (a dishonesty record), and a licensed one.
    let mut deferral = catalogued("P-1", "FOOD-PROD-NEW", &code, "A");
    deferral.route = Route::Commitment as i32;
    deferral.scenario = Scenario::MaterialDeferral as i32;
    deferral.deferred_materials = vec!["fire safety certificate".into()];
    deferral.commitment_period_working_days = 2;
    intake.accept_case(deferral).await?;
    intake.accept_case(catalogued("P-2", "FOOD-PROD-CHG", &code, "B")).await?;
    intake
        .complete_approval(CompleteApprovalRequest {
            case_id: "320700/P-2".into(),
            license_no: "JY2".into(),
            approval_opinion: "ok".into(),
            document_refs: vec![],
        })
        .await?;
    server.advance_to("2026-10-02T10:00:00+08:00").await?;
    intake
        .revoke_approval(RevokeApprovalRequest {
            case_id: "320700/P-1".into(),
            reason: "materials not handed in".into(),
            basis: "§8".into(),
        })
        .await?;
    let other = uscc("91320700MA1000005");
    intake.accept_case(catalogued("P-3", "FOOD-PROD-NEW", &other, "A")).await?;

    let p = server
        .admin()
        .get_enterprise_profile(GetEnterpriseProfileRequest { credit_code: code.clone() })
        .await?
        .into_inner();
    assert_eq!(p.credit_code, code);
    assert_eq!(p.cases.iter().map(|c| c.instance_id.as_str()).collect::<Vec<_>>(), ["320700/P-1", "320700/P-2"]);
    assert_eq!(p.credit_grade, "B", "the grade of its latest case");
    assert_eq!(p.tasks.iter().map(|t| t.instance_id.as_str()).collect::<Vec<_>>(), ["320700/P-2/T1"]);
    let kinds: Vec<&str> = p.events.iter().map(|e| e.kind.as_str()).collect();
    for k in ["accepted", "licensed", "breach", "revocation"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert!(p.credit_records.iter().any(|m| m.text.contains("失信记录")), "{:?}", p.credit_records);
    assert!(
        p.open_deadlines.iter().any(|d| d.instance_id == "320700/P-2/T1"),
        "the task's viewing deadline is open: {:?}",
        p.open_deadlines
    );
    let err = server
        .admin()
        .get_enterprise_profile(GetEnterpriseProfileRequest { credit_code: uscc("91320700MA1999999") })
        .await
        .expect_err("nothing about it");
    assert_eq!(err.code(), Code::NotFound);
    let err = server
        .admin()
        .get_enterprise_profile(GetEnterpriseProfileRequest { credit_code: "91320700MA10000041".into() })
        .await
        .expect_err("bad check character");
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await
}

/// Grade of the i-th of the 40 enterprises the spot-check test licenses.
fn grade_of(i: usize) -> &'static str {
    match i {
        0..20 => "A",
        20..30 => "B",
        30..37 => "C",
        _ => "dishonest",
    }
}

#[tokio::test]
async fn spot_checks_over_three_months_skip_holidays_repeat_from_their_seeds_and_keep_their_ratios() -> Result<()> {
    // Monday 14 September 2026 to Monday 14 December 2026: 14 Mondays, one of them (5 October)
    // in the National Day holiday.
    let server = TestServer::start("2026-09-13T10:00:00+08:00").await?;
    let mut admin = server.admin();
    admin.import_catalogs(example_catalog()).await?;
    let mut intake = server.intake();
    let mut codes = Vec::new();
    for i in 0..40 {
        let code = uscc(&format!("91320700MA2{i:06}"));
        let item = if i % 2 == 0 { "FOOD-PROD-NEW" } else { "FOOD-PROD-CHG" };
        licensed(&server, &format!("S-{i}"), item, &code, grade_of(i)).await?;
        codes.push(code);
    }
    // A case of another item (public venues) is not in the food producers' population.
    intake.accept_case(catalogued("S-X", "PUB-VENUE-NEW", &uscc("91320700MA3000001"), "A")).await?;

    let bad = |f: fn(&mut CreateSpotCheckPlanRequest)| {
        let mut r = plan_request();
        f(&mut r);
        r
    };
    for (req, code) in [
        (bad(|r| r.schedule = "every monday".into()), Code::InvalidArgument),
        // 30 February: a schedule that never falls due starts no plan.
        (bad(|r| r.schedule = "0 9 30 2 *".into()), Code::FailedPrecondition),
        (bad(|r| r.ratios = "A=1.5".into()), Code::InvalidArgument),
        (bad(|r| r.supervision_item = "NOPE".into()), Code::InvalidArgument),
        (bad(|r| r.office = "WJW-PH".into()), Code::FailedPrecondition),
        (bad(|r| r.inspectors_per_target = 9), Code::FailedPrecondition),
        (bad(|r| r.code = "../x".into()), Code::InvalidArgument),
    ] {
        let err = admin.create_spot_check_plan(req.clone()).await.expect_err("refused");
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
    }
    let listed = admin.list_spot_check_plans(shenguan::proto::ListSpotCheckPlansRequest::default()).await?;
    assert!(listed.into_inner().plans.is_empty(), "no refused plan was written");
    let plan = admin.create_spot_check_plan(plan_request()).await?.into_inner();
    assert_eq!(plan.plan_id, "SC/320700/FOOD-2026Q4");
    assert_eq!(plan.next_run.as_ref().map(|i| i.shanghai.as_str()), Some("2026-09-14 09:00:00 +08:00"));

    // Three months, a day at a time: each run falls due at its own instant.
    let calendars = shenguan::calendar::Calendars::embedded()?;
    let calendar = calendars.region("320700");
    let mut day = chrono::NaiveDate::from_ymd_opt(2026, 9, 14).expect("date");
    let end = chrono::NaiveDate::from_ymd_opt(2026, 12, 14).expect("date");
    while day <= end {
        server.advance_to(&format!("{day}T10:00:00+08:00")).await?;
        day = day.succ_opt().expect("date");
    }
    let reply = admin
        .list_spot_check_runs(ListSpotCheckRunsRequest { plan_id: plan.plan_id.clone(), include_records: true })
        .await?
        .into_inner();
    let runs = reply.runs;
    assert_eq!(runs.len(), 14, "one run per Monday, the holiday one moved, none lost");
    let mut due_days = Vec::new();
    for r in &runs {
        let due = r.due_at.as_ref().expect("due");
        let date = chrono::DateTime::from_timestamp_millis(due.unix_millis)
            .expect("instant")
            .with_timezone(&calendar.tz())
            .date_naive();
        assert!(calendar.is_working_day(date)?, "run {} fell due on {date}, a day off", r.run);
        assert!(due.shanghai.ends_with("09:00:00 +08:00"), "{}", due.shanghai);
        due_days.push(date.to_string());
    }
    assert!(
        due_days.contains(&"2026-10-08".to_owned()),
        "the Monday of National Day moves to Thursday 8 October: {due_days:?}"
    );
    assert!(!due_days.contains(&"2026-10-05".to_owned()));

    // Every draw repeats from its record, here as on the server.
    let mut drawn: BTreeMap<String, usize> = BTreeMap::new();
    let mut population: BTreeMap<String, usize> = BTreeMap::new();
    let mut seeds = std::collections::BTreeSet::new();
    for r in &runs {
        assert!(r.verified, "run {} does not repeat from its record", r.run);
        let record: shenguan::domain::spotcheck::DrawRecord = serde_json::from_str(&r.record_json)?;
        let seed: u64 = record.seed.parse()?;
        seeds.insert(seed);
        let again = shenguan::domain::spotcheck::draw(seed, &record.population, &record.ratios, &record.inspectors, 2);
        assert_eq!(
            again.iter().map(|t| (&t.code, &t.inspectors)).collect::<Vec<_>>(),
            r.targets.iter().map(|t| (&t.credit_code, &t.inspectors)).collect::<Vec<_>>(),
            "run {}",
            r.run
        );
        assert_eq!(record.population.len(), 40, "the licensed food producers, not the public venue");
        for m in &record.population {
            *population.entry(m.grade.clone()).or_default() += 1;
        }
        for t in &r.targets {
            *drawn.entry(t.credit_grade.clone()).or_default() += 1;
            assert_eq!(t.inspectors.len(), 2);
            assert_ne!(t.inspectors[0], t.inspectors[1]);
            assert!(t.inspectors.iter().all(|i| i.starts_with("SJJ-01")), "inspectors of SJJ-FOOD: {:?}", t.inspectors);
            let open = if r.run == 14 { vec!["assigned"] } else { vec!["assigned", "overdue"] };
            assert!(open.contains(&t.state.as_str()), "a task per target, 20 working days for the result: {t:?}");
        }
    }
    assert_eq!(seeds.len(), runs.len(), "a fresh seed per run");
    // Ratios: A 10% of 20, B 25% of 10, C 50% of 7 (3.5), dishonest 100%. Over 14 runs each
    // grade's total is within four standard deviations of its expectation.
    for (grade, ratio) in [("A", 0.1), ("B", 0.25), ("C", 0.5), ("dishonest", 1.0)] {
        let n = population[grade] as f64;
        let expected = ratio * n;
        let got = drawn.get(grade).copied().unwrap_or(0) as f64;
        // Randomised rounding: per run the count is floor(e) or floor(e)+1.
        let frac = expected / 14.0 - (expected / 14.0).floor();
        let sd = (14.0 * frac * (1.0 - frac)).sqrt().max(0.5);
        assert!((got - expected).abs() <= 4.0 * sd, "grade {grade}: {got} drawn, {expected} expected");
    }

    // Results are reported and published; the runs show them.
    let first = runs[0].targets.first().expect("a target").clone();
    let t = server
        .supervision()
        .report_spot_check_result(ReportSpotCheckResultRequest {
            task_id: first.task_id.clone(),
            outcome: "non_compliant".into(),
            findings: "storage too warm".into(),
        })
        .await?
        .into_inner();
    assert_eq!((t.state.as_str(), t.result.as_str()), ("closed", "non_compliant"));
    let err = server
        .supervision()
        .report_spot_check_result(ReportSpotCheckResultRequest {
            task_id: first.task_id.clone(),
            outcome: "maybe".into(),
            findings: String::new(),
        })
        .await
        .expect_err("bad outcome");
    assert_eq!(err.code(), Code::InvalidArgument);
    let reply = admin
        .list_spot_check_runs(ListSpotCheckRunsRequest { plan_id: plan.plan_id.clone(), include_records: true })
        .await?
        .into_inner();
    let shown = reply.runs[0].targets.iter().find(|t| t.task_id == first.task_id).expect("target");
    assert_eq!(shown.result, "non_compliant");
    // The enterprise's profile shows the spot check.
    let p = admin
        .get_enterprise_profile(GetEnterpriseProfileRequest { credit_code: first.credit_code.clone() })
        .await?
        .into_inner();
    assert!(p.tasks.iter().any(|t| t.instance_id == first.task_id));
    assert!(p.events.iter().any(|e| e.kind == "spot_check_result"));

    // The generic EngineService cannot forge a draw or start a plan past its checks.
    let mut engine = shenguan::proto::engine_service_client::EngineServiceClient::new(server.channel.clone());
    let err = engine
        .signal(shenguan::proto::SignalRequest {
            instance_id: plan.plan_id.clone(),
            event: "run_drawn".into(),
            fields_json: r#"{"run":99,"seed":"1","population":0,"selected":0,"draw":"{}"}"#.into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = engine
        .start(shenguan::proto::StartRequest {
            workflow: "spot_check_plan".into(),
            instance_id: "plan-x".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);

    let ended = admin
        .end_spot_check_plan(EndSpotCheckPlanRequest { plan_id: plan.plan_id.clone(), reason: "quarter over".into() })
        .await?
        .into_inner();
    assert_eq!(ended.state, "ended");
    assert!(ended.next_run.is_none());
    let err = admin
        .list_spot_check_runs(ListSpotCheckRunsRequest { plan_id: "SC/../../etc".into(), include_records: false })
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
    let _ = codes;
    server.stop().await
}

fn plan_request() -> CreateSpotCheckPlanRequest {
    CreateSpotCheckPlanRequest {
        code: "FOOD-2026Q4".into(),
        region_code: "320700".into(),
        name: "Food producers, fourth quarter".into(),
        office: "SJJ-FOOD".into(),
        supervision_item: "SJ-FOOD-PROD".into(),
        schedule: "0 9 * * MON".into(),
        working_days_only: true,
        ratios: "A=0.1,B=0.25,C=0.5,dishonest=1".into(),
        inspectors_per_target: 2,
    }
}

/// A run that falls due while no server runs is drawn once one starts again: the cron timer is a
/// stored timer like any deadline, fired at start, and the runner draws what it counted.
#[tokio::test]
async fn a_run_due_while_the_server_was_down_is_drawn_after_the_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("restart.db");
    let server = TestServer::start_on("2026-09-13T10:00:00+08:00", &db, |_| {}).await?;
    server.admin().import_catalogs(example_catalog()).await?;
    for i in 0..3 {
        let code = uscc(&format!("91320700MA4{i:06}"));
        licensed(&server, &format!("R-{i}"), "FOOD-PROD-NEW", &code, "C").await?;
    }
    let mut request = plan_request();
    request.ratios = "C=1".into();
    let plan = server.admin().create_spot_check_plan(request).await?.into_inner();
    server.stop().await?;

    // Monday 14 September 09:00 passes with no server; it starts again at noon.
    let server = TestServer::start_on("2026-09-14T12:00:00+08:00", &db, |_| {}).await?;
    server.advance_to("2026-09-14T12:00:00.001+08:00").await?;
    let runs = server
        .admin()
        .list_spot_check_runs(ListSpotCheckRunsRequest { plan_id: plan.plan_id.clone(), include_records: false })
        .await?
        .into_inner();
    assert_eq!(runs.runs.len(), 1, "the run that fell due while down, drawn once");
    assert!(
        server.metrics().await?.contains("shenguan_spot_check_draws_total{result=\"drawn\"} 1"),
        "the draw is counted"
    );
    let run = &runs.runs[0];
    assert_eq!(run.due_at.as_ref().map(|i| i.shanghai.as_str()), Some("2026-09-14 09:00:00 +08:00"));
    assert_eq!(run.targets.len(), 3, "ratio 1 draws every C enterprise");
    assert!(run.verified);
    assert_eq!(
        runs.plan.and_then(|p| p.next_run).map(|i| i.shanghai),
        Some("2026-09-21 09:00:00 +08:00".to_owned()),
        "armed again for the next Monday"
    );
    server.stop().await
}

/// One clock jump of ten days over two weekly plans: every occurrence that passed is drawn, in
/// order, each at its own due instant — none skipped. A plan whose office has too few
/// inspectors is not drawn with none: its runs are escalated to the office once and wait,
/// while the other plan is drawn all the same; once the catalog gives the office its
/// inspectors, the waiting runs are drawn.
#[tokio::test]
async fn missed_runs_are_all_drawn_and_a_plan_without_inspectors_is_escalated_not_drawn() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("missed.db");
    let server = TestServer::start_on("2026-09-13T10:00:00+08:00", &db, |_| {}).await?;
    let mut admin = server.admin();
    admin.import_catalogs(example_catalog()).await?;
    for i in 0..3 {
        let code = uscc(&format!("91320700MA6{i:06}"));
        licensed(&server, &format!("M-{i}"), "FOOD-PROD-NEW", &code, "C").await?;
    }
    let plan = |code: &str, office: &str, item: &str| CreateSpotCheckPlanRequest {
        code: code.into(),
        region_code: "320700".into(),
        name: format!("{code} 抽查"),
        office: office.into(),
        supervision_item: item.into(),
        schedule: "0 9 * * MON".into(),
        working_days_only: false,
        ratios: "C=1".into(),
        inspectors_per_target: 2,
    };
    let food = admin.create_spot_check_plan(plan("FOOD", "SJJ-FOOD", "SJ-FOOD-PROD")).await?.into_inner();
    let fire = admin.create_spot_check_plan(plan("FIRE", "XF-INSP", "XF-SAFETY")).await?.into_inner();
    // The fire office loses an inspector: one is left, two are needed per target.
    let all_inspectors = example_file("catalog/inspectors.csv");
    let inspectors: Vec<&str> = all_inspectors.lines().filter(|l| !l.starts_with("XF-0302")).collect();
    admin.import_catalogs(import(vec![file("inspectors.csv", &(inspectors.join("\n") + "\n"))])).await?;

    // Mondays 14 and 21 September pass in one jump.
    admin.advance_clock(shenguan::proto::AdvanceClockRequest { by_millis: 10 * 86_400_000, to: String::new() }).await?;
    let runs = |id: String| {
        let mut admin = server.admin();
        async move {
            let r =
                admin.list_spot_check_runs(ListSpotCheckRunsRequest { plan_id: id, include_records: false }).await?;
            anyhow::Ok(r.into_inner())
        }
    };
    let food_runs = runs(food.plan_id.clone()).await?;
    let dues: Vec<String> =
        food_runs.runs.iter().map(|r| r.due_at.as_ref().map(|i| i.shanghai.clone()).unwrap_or_default()).collect();
    assert_eq!(dues, ["2026-09-14 09:00:00 +08:00", "2026-09-21 09:00:00 +08:00"], "both missed runs, in order");
    assert!(food_runs.runs.iter().all(|r| r.verified && r.targets.len() == 3));
    let fire_runs = runs(fire.plan_id.clone()).await?;
    assert!(fire_runs.runs.is_empty(), "no draw is written without inspectors");
    assert_eq!(fire_runs.plan.as_ref().map(|p| (p.runs, p.drawn)), Some((2, 0)), "both runs due, none drawn");
    assert!(server.metrics().await?.contains("shenguan_spot_check_draws_total{result=\"refused\"}"));

    // The inspector is back: the waiting runs are drawn at the runner's next round.
    admin.import_catalogs(import(vec![file("inspectors.csv", &example_file("catalog/inspectors.csv"))])).await?;
    admin.advance_clock(shenguan::proto::AdvanceClockRequest { by_millis: 1, to: String::new() }).await?;
    let fire_runs = runs(fire.plan_id.clone()).await?;
    assert_eq!(fire_runs.runs.len(), 2, "drawn once staffed");
    // Everything the fire plan sent, in order, up to its two draws: one escalation.
    let mut events = shenguan::proto::events_service_client::EventsServiceClient::new(server.channel.clone());
    let request = shenguan::proto::SubscribeRequest {
        consumer: "missed-runs".into(),
        channels: vec!["escalation".into(), "spot_check".into()],
        max_in_flight: 1000,
        ..Default::default()
    };
    let mut stream = events.subscribe(request).await?.into_inner();
    let (mut escalations, mut draws) = (0, 0);
    while draws < 2 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(30), stream.message()).await??;
        let event = event.ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
        if event.instance_id == fire.plan_id {
            match event.channel.as_str() {
                "escalation" => escalations += 1,
                _ => draws += 1,
            }
        }
    }
    assert_eq!(escalations, 1, "escalated once, not at every round");
    server.stop().await
}
