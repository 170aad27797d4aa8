//! deploy/cloud.toml loads; the registry-only `gaps` command works on a registry file.

use std::path::Path;
use std::process::Command;

use edubrain_cloud::CloudConfig;

fn deploy(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)
}

#[test]
fn deploy_cloud_config_loads_with_the_plan_targets() {
    let c = CloudConfig::load(&deploy("cloud.toml")).unwrap();
    assert_eq!(c.thresholds, edubrain_cloud::config::Thresholds::default());
    assert_eq!(c.recommendation, edubrain_cloud::config::RecommendationWeights::default());
    assert_eq!(c.zone_targets, edubrain_cloud::config::ZoneTargets::default());
    assert_eq!(c.query, edubrain_cloud::config::QueryLimits::default());
    assert_eq!(c.headline, edubrain_cloud::config::HeadlineConfig::default());
    assert_eq!(c.maintenance, edubrain_cloud::maintenance::MaintenanceConfig::default());
    // The example principals are well-formed (hashes, scopes).
    let access = edubrain_cloud::access::AccessControl::new(&c.access).unwrap();
    assert!(!access.is_empty());
}

#[test]
fn token_command_prints_an_entry_that_grants_the_token() {
    let bin = env!("CARGO_BIN_EXE_edubrain-cloud");
    let out = Command::new(bin).args(["token", "--name", "c02-hub", "--role", "city", "--scope", "c02"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let token = stderr.trim().rsplit(' ').next().unwrap();
    let entry = String::from_utf8(out.stdout).unwrap();
    let config: CloudConfig = toml::from_str(&entry).unwrap_or_else(|e| panic!("{e}: {entry}"));
    let access = edubrain_cloud::access::AccessControl::new(&config.access).unwrap();
    let p = access.authenticate(Some(&format!("Bearer {token}"))).unwrap();
    assert_eq!((p.name.as_str(), &p.role), ("c02-hub", &edubrain_cloud::access::Role::City("c02".into())));
    let out = Command::new(bin).args(["token", "--name", "x", "--role", "city"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("need --scope"));
}

#[test]
fn unknown_threshold_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[thresholds]\nutilization_target = 0.7\n").unwrap();
    let err = CloudConfig::load(&p).unwrap_err().to_string();
    assert!(err.contains("utilization_target"), "{err}");
}

const REGISTRY: &str = "\
school_id,school_name,city,county,alliance,zone,locale,level,enrolment,teachers_total,teachers_qualified,key_teachers,pe_art_teachers,senior_title_teachers,floor_area_m2,sports_area_m2,equipment_value_yuan,multimedia_classrooms,funding_yuan,strong
s1,城区一小,c01,k1,a1,z1,urban,primary,100,10,10,2,1,4,600,500,300000,3,1200000,true
s2,乡二小,c01,k1,a1,z1,rural,primary,300,20,10,6,3,3,1800,1500,900000,9,3600000,false
";

#[test]
fn gaps_command_prints_json_and_tables_and_names_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.csv");
    std::fs::write(&reg, REGISTRY).unwrap();
    let bin = env!("CARGO_BIN_EXE_edubrain-cloud");
    let out = Command::new(bin).args(["gaps", "--registry"]).arg(&reg).args(["--format", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row =
        report["cv"].as_array().unwrap().iter().find(|r| r["scope"] == "county" && r["indicator"] == "qualified_teachers_per_100").unwrap();
    assert!((row["cv"].as_f64().unwrap() - 0.577_350_269).abs() < 1e-6);
    assert_eq!(row["meets"], false);

    let out = Command::new(bin).args(["gaps", "--registry"]).arg(&reg).output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("qualified_teachers_per_100") && table.contains("OVER"), "{table}");

    std::fs::write(&reg, REGISTRY.replace("rural,primary,300", "rural,primary,lots")).unwrap();
    let out = Command::new(bin).args(["gaps", "--registry"]).arg(&reg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("enrolment"), "{err}");
}
