//! Offline evaluation of the recommendations on six simulated school weeks: train on the first
//! four, test on the last two, against the popularity baseline. Prints the figures (run with
//! `--nocapture`); `edubrain-cloud evaluate-recommendations` gives them for any warehouse.

use chrono::NaiveDate;
use edubrain_agent::province::{self, ProvinceSpec};
use edubrain_agent::simulate::{SimulationSpec, local_offset, simulate};
use edubrain_cloud::Warehouse;
use edubrain_cloud::analytics::evaluation::evaluate;
use edubrain_cloud::batch::StoredEvent;
use edubrain_cloud::config::RecommendationWeights;

#[tokio::test]
async fn recommender_beats_popularity_on_held_out_weeks() {
    let dir = tempfile::tempdir().unwrap();
    let province =
        province::build(&ProvinceSpec { seed: 11, cities: 2, alliances_per_city: 2, schools_per_alliance: 6, classrooms_per_school: 2 });
    let registry = dir.path().join("registry.csv");
    edubrain_agent::write_registry(&province, &registry).unwrap();
    let schools = edubrain_cloud::registry::load(&registry).unwrap();
    let first_day = NaiveDate::from_ymd_opt(2026, 9, 7).unwrap(); // a Monday
    let events = simulate(&province, &SimulationSpec { first_day, school_days: 30, heartbeat_minutes: 120, seed: 5 });
    let stored: Vec<StoredEvent> =
        events.into_iter().map(|event| StoredEvent { received_time: event.header.event_time, event, clock_flag: None }).collect();
    let root = dir.path().join("warehouse");
    edubrain_cloud::sink::write_events(&root, "part-0.parquet", &stored, local_offset()).unwrap();
    let w = Warehouse::open(&root, schools, 1 << 30).await.unwrap();

    let cutoff = first_day + chrono::Days::new(28); // weeks 5 and 6 are held out
    let report = evaluate(&w, cutoff, &RecommendationWeights::default(), 10).await.unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.schools_evaluated >= 20, "{report:?}");
    for m in [report.recommender, report.popularity] {
        for v in [m.hit_rate, m.ndcg, m.recall] {
            assert!((0.0..=1.0).contains(&v), "{report:?}");
        }
    }
    assert!(report.recommender.hit_rate >= report.popularity.hit_rate, "{report:?}");
    assert!(report.recommender.ndcg >= report.popularity.ndcg, "{report:?}");
}
