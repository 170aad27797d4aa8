//! Poison records on the events topic (written by something other than an edge) are kept in
//! the quarantine table with topic, partition, offset and reason; the good records around them
//! still reach the warehouse and the consumer moves past them.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use edubrain_brokers::{Storage, Tansu};
use edubrain_cloud::CloudConfig;
use edubrain_schemas::event::{BandwidthSampled, EventBody};
use edubrain_schemas::topics::KAFKA_EVENTS_TOPIC;
use edubrain_schemas::{Event, Header, SCHEMA_VERSION};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn good(n: u128) -> Vec<u8> {
    Event {
        header: Header {
            event_id: Uuid::from_u128(n),
            schema_version: SCHEMA_VERSION,
            city: "c01".into(),
            school: "s1".into(),
            classroom: "r1".into(),
            terminal: "t1".into(),
            event_time: Utc.with_ymd_and_hms(2026, 9, 7, 2, 0, n as u32).unwrap(),
        },
        body: EventBody::BandwidthSampled(BandwidthSampled { down_kbps: 100.0, up_kbps: 10.0 }),
    }
    .to_json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_quarantined_and_good_ones_go_through() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(&dir.path().join("tansu"), Storage::Memory).unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", tansu.bootstrap()).create().unwrap();
    admin.create_topics(&[NewTopic::new(KAFKA_EVENTS_TOPIC, 1, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", tansu.bootstrap()).create().unwrap();
    let mut bad_json = good(2);
    bad_json.truncate(20);
    let mut bad_rating: serde_json::Value = serde_json::from_slice(&good(3)).unwrap();
    bad_rating["payload"]["down_kbps"] = serde_json::json!(-5.0);
    let records = [good(1), bad_json, serde_json::to_vec(&bad_rating).unwrap(), good(4)];
    for r in &records {
        producer.send(FutureRecord::to(KAFKA_EVENTS_TOPIC).key("r1").payload(r), Duration::from_secs(10)).await.unwrap();
    }

    let shutdown = CancellationToken::new();
    let mut config = CloudConfig::on_loopback(dir.path().join("warehouse"), None, &tansu.bootstrap());
    config.ingest.flush_interval_ms = 100;
    let cloud = edubrain_cloud::start(config, shutdown.clone()).await.unwrap();
    let mut rx = cloud.progress.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = *rx.borrow_and_update();
        if p.events_written == 2 && p.quarantined == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ctx = cloud.warehouse.context();
    ctx.register_parquet("quarantine", dir.path().join("warehouse/quarantine").to_str().unwrap(), Default::default()).await.unwrap();
    let rows = cloud
        .warehouse
        .query_json("SELECT topic, \"partition\", \"offset\", rule, reason FROM quarantine ORDER BY \"offset\"")
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0]["offset"].as_i64(), rows[0]["rule"].as_str()), (Some(1), Some("json_syntax")));
    assert_eq!((rows[1]["offset"].as_i64(), rows[1]["rule"].as_str()), (Some(2), Some("range")));
    assert!(rows[1]["reason"].as_str().unwrap().contains("payload.down_kbps"), "{rows:?}");
    assert_eq!(rows[0]["topic"], KAFKA_EVENTS_TOPIC);
    let ids = cloud.warehouse.query_json("SELECT event_id FROM events ORDER BY event_id").await.unwrap();
    let ids: Vec<&str> = ids.iter().map(|r| r["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [Uuid::from_u128(1).to_string(), Uuid::from_u128(4).to_string()]);
    let metrics = cloud.metrics.render();
    assert!(metrics.contains("edubrain_cloud_ingest_records_quarantined_total{rule=\"range\"} 1"), "{metrics}");
    shutdown.cancel();
    cloud.wait().await.unwrap();
}
