//! The web dashboard in a real headless Chromium (Debian's `chromium`, installed by
//! `scripts/ensure-tools`), against the API fixture's server: the page loads with a token, shows
//! every view with the numbers the API gives, draws its charts, shows an alliance only its own
//! schools, and sends a bad token back to the login form. A screenshot of the province's view
//! is written to `$CARGO_TARGET_TMPDIR/web-dashboard/province.png`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, fixture};
use edubrain_cloud::access::Role;
use scraper::{Html, Selector};

fn chromium() -> PathBuf {
    let path = std::env::var_os("EDUBRAIN_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(path.is_file(), "{} not found: run scripts/ensure-tools (apt-get install chromium)", path.display());
    path
}

/// Runs headless Chromium on `url` with `args`, in a fresh profile; returns its stdout.
fn headless(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions"])
        // Virtual time stops while requests are in flight, so the budget is spent only once
        // every fetch of the page has answered.
        .arg("--virtual-time-budget=20000")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium {args:?} {url}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The page as the browser left it after its scripts ran.
fn rendered(f: &Fixture, token: &str) -> Html {
    Html::parse_document(&headless(&format!("{}/#token={token}", f.base), &["--dump-dom"]))
}

/// `1234567` as the page writes it (`toLocaleString("en")`): `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn select<'a>(doc: &'a Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
    doc.select(&Selector::parse(css).unwrap()).collect()
}

fn text(doc: &Html, css: &str) -> String {
    select(doc, css).iter().map(|e| e.text().collect::<String>()).collect::<Vec<_>>().join(" ")
}

#[test]
fn the_province_sees_every_view_with_the_apis_numbers() {
    let f = fixture();
    let token = f.token(&Role::Province);
    let doc = rendered(f, token);
    assert_eq!(select(&doc, "body[data-ready=true]").len(), 1, "the page finished loading:\n{}", doc.html());
    assert_eq!(text(&doc, "#error"), "", "no view failed");
    assert_eq!(text(&doc, "#who"), "p0 · province · 12 schools");

    // Overview: one bar per alliance in each chart, labelled with the API's percentages.
    let (_, summary, _) = f.get(Some(token), "/api/v1/summary");
    let alliances = summary["utilisation_by_alliance"].as_array().unwrap();
    assert_eq!(alliances.len(), 4);
    assert_eq!(select(&doc, "#chart-utilisation rect.bar").len(), 4);
    assert_eq!(select(&doc, "#chart-idle rect.bar").len(), 4);
    let chart = text(&doc, "#chart-utilisation");
    for a in alliances {
        let shown = format!("{:.1}%", a["utilisation"]["value"].as_f64().unwrap() * 100.0);
        assert!(chart.contains(a["group"].as_str().unwrap()) && chart.contains(&shown), "{shown} for {} in {chart:?}", a["group"]);
    }
    let events = summary["events"]["events"].as_u64().unwrap();
    assert!(text(&doc, "#kpis").contains(&thousands(events)), "{events} events in {:?}", text(&doc, "#kpis"));

    // Gap league table: a row per alliance and level, ranked by indicators over the limit.
    let rows = select(&doc, "#gap-table tbody tr");
    assert!(rows.len() >= 4, "{} gap rows", rows.len());
    let over: Vec<u64> = rows
        .iter()
        .map(|r| r.select(&Selector::parse("td").unwrap()).nth(4).unwrap().text().collect::<String>().parse().unwrap())
        .collect();
    assert!(over.windows(2).all(|w| w[0] >= w[1]), "ranked by indicators over limit: {over:?}");

    // Trends: a line per alliance; zones: the monthly table; the school view: recommendations.
    assert_eq!(select(&doc, "#chart-trend polyline.series").len(), 4);
    let (_, zones, _) = f.get(Some(token), "/api/v1/zones");
    assert_eq!(select(&doc, "#zone-months tbody tr").len(), zones["months"].as_array().unwrap().len());
    let school = select(&doc, "#school-select option")[0].value().attr("value").unwrap().to_string();
    let (_, recs, _) = f.get(Some(token), &format!("/api/v1/recommendations?school={school}"));
    let recs = recs["recommendations"].as_array().unwrap();
    assert!(!recs.is_empty());
    assert_eq!(select(&doc, "#recommendations tbody tr").len(), recs.len());
    assert!(text(&doc, "#recommendations").contains(recs[0]["resource_id"].as_str().unwrap()));

    // The token is gone from the address bar and the page: only the tab's sessionStorage has it.
    assert!(!doc.html().contains(token), "the token must not be in the page");

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("province.png");
    let _ = std::fs::remove_file(&png);
    headless(
        &format!("{}/#token={token}", f.base),
        &[&format!("--screenshot={}", png.display()), "--window-size=1280,4200", "--force-device-scale-factor=1"],
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!((w, h), (1280, 4200));
    // A blank page compresses to a few kilobytes; charts, tables and text do not.
    assert!(bytes.len() > 100_000, "screenshot {} is only {} bytes", png.display(), bytes.len());
    println!("screenshot: {}", png.display());
}

#[test]
fn an_alliance_sees_only_its_own_schools() {
    let f = fixture();
    let alliance = f.schools[0].alliance.clone();
    let role = Role::Alliance(alliance.clone());
    let doc = rendered(f, f.token(&role));
    assert_eq!(select(&doc, "body[data-ready=true]").len(), 1, "{}", doc.html());
    let v = f.visible(&role);
    assert!(text(&doc, "#who").ends_with(&format!("· alliance {alliance} · {} schools", v.schools.len())), "{}", text(&doc, "#who"));
    let listed: Vec<String> = select(&doc, "#school-select option").iter().map(|o| o.value().attr("value").unwrap().to_string()).collect();
    assert_eq!(listed.iter().cloned().collect::<std::collections::BTreeSet<_>>(), v.schools);
    // No other school's or alliance's id appears anywhere on the page.
    let page: String = doc.root_element().text().collect();
    for s in f.schools.iter().filter(|s| !role.sees(s)) {
        assert!(!page.contains(&format!("{} ", s.school_id)) && !listed.contains(&s.school_id), "{} shown to {alliance}", s.school_id);
    }
    assert_eq!(select(&doc, "#chart-utilisation rect.bar").len(), 1, "one alliance, one bar");
    for other in f.schools.iter().map(|s| &s.alliance).filter(|a| **a != alliance) {
        assert!(!text(&doc, "#chart-utilisation").contains(other.as_str()), "{other} in {alliance}'s chart");
    }
}

#[test]
fn a_bad_token_is_sent_back_to_the_login_form() {
    let f = fixture();
    let doc = rendered(f, "not-a-token");
    assert_eq!(select(&doc, "body[data-ready=login]").len(), 1, "{}", doc.html());
    assert_eq!(text(&doc, "#login-error"), "That token was not accepted.");
    assert_eq!(select(&doc, "#app[hidden]").len(), 1, "no data view is shown");
}
