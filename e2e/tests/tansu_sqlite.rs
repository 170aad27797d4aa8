//! Tansu's sqlite engine as the fault tests run it. Tansu 0.6 creates its headers table
//! without an index on the columns its fetch looks each record's headers up by, so every
//! record fetched scanned every header stored; `edubrain_brokers::Tansu` adds the index. Here:
//! the header lookup uses it, after a restart too, and a consumer reading a backlog from the
//! beginning gets every record with its own headers.

use edubrain_brokers::{Storage, Tansu};

const TOPIC: &str = "backlog";
const RECORDS: u64 = 2_000;

/// How sqlite plans Tansu's per-record header lookup (its `header_fetch.sql` joins to
/// `header` on these two columns).
fn header_lookup_plan(tansu: &Tansu) -> String {
    tansu.sqlite("EXPLAIN QUERY PLAN SELECT k, v FROM header WHERE topition = 1 AND offset_id = 7").unwrap().expect("the sqlite engine")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_indexed_and_a_backlog_reads_back_with_them_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut tansu = Tansu::start(&dir.path().join("tansu"), Storage::Sqlite).unwrap();
    let plan = header_lookup_plan(&tansu);
    assert!(plan.contains("USING INDEX edubrain_header_record"), "the header lookup scans the table:\n{plan}");

    edubrain_e2e::create_topic(&tansu.bootstrap(), TOPIC).await;
    edubrain_e2e::produce_with_headers(&tansu.bootstrap(), TOPIC, RECORDS, |i| format!("v{i}").into_bytes()).await;

    tokio::task::block_in_place(|| tansu.restart()).unwrap();
    let plan = header_lookup_plan(&tansu);
    assert!(plan.contains("USING INDEX edubrain_header_record"), "no index after a restart:\n{plan}");

    let records = edubrain_e2e::read_to_end(&tansu.bootstrap(), TOPIC).await;
    assert_eq!(records.len() as u64, RECORDS);
    for (i, (value, headers)) in records.iter().enumerate() {
        assert_eq!(value, format!("v{i}").as_bytes());
        assert_eq!(headers.get("edubrain.received_ms").map(String::as_str), Some(i.to_string().as_str()), "record {i}: {headers:?}");
        assert_eq!(headers.get("edubrain.edge_city").map(String::as_str), Some("c01"), "record {i}: {headers:?}");
    }
}
