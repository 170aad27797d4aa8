//! Arrow schemas of the warehouse tables.
//!
//! `events` is one wide table: the envelope columns, then one nullable column per payload field
//! (a field shared by several event types, like `duration_s`, is one column). Parquet files are
//! hive-partitioned as `date=YYYY-MM-DD/city=ID/`, so those two columns live in the path, not in
//! the files. `date` is the local school day (province time zone), not the UTC date.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Partition columns of the events table, outermost first.
pub const EVENT_PARTITION_COLUMNS: [&str; 2] = ["date", "city"];

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The schema of the events Parquet files (without the partition columns).
pub fn event_file_schema() -> SchemaRef {
    use DataType::*;
    let req = |n: &str, t: DataType| Field::new(n, t, false);
    let opt = |n: &str, t: DataType| Field::new(n, t, true);
    Arc::new(Schema::new(vec![
        req("event_id", Utf8),
        req("schema_version", UInt32),
        req("event_type", Utf8),
        req("school", Utf8),
        req("classroom", Utf8),
        req("terminal", Utf8),
        req("event_time", ts()),
        req("received_time", ts()),
        // `device_clock_unset` / `device_clock_ahead` when event_time is implausible (see validate).
        opt("clock_flag", Utf8),
        opt("device_id", Utf8),
        opt("device_kind", Utf8),
        opt("uptime_s", UInt64),
        opt("equipment", Utf8),
        opt("session_id", Utf8),
        opt("duration_s", Float64),
        opt("booking_id", Utf8),
        opt("facility_id", Utf8),
        opt("facility_kind", Utf8),
        opt("booking_school", Utf8),
        opt("slot_start", ts()),
        opt("slot_end", ts()),
        opt("stream_id", Utf8),
        opt("outage_s", Float64),
        opt("lesson_id", Utf8),
        opt("subject", Utf8),
        opt("grade", UInt8),
        opt("teacher_id", Utf8),
        opt("dual_teacher", Boolean),
        opt("receiving_schools", List(Arc::new(Field::new("item", Utf8, true)))),
        opt("scheduled_minutes", UInt32),
        opt("present", UInt32),
        opt("enrolled", UInt32),
        opt("resource_id", Utf8),
        opt("resource_kind", Utf8),
        opt("owner_school", Utf8),
        opt("passed_review", Boolean),
        opt("rating", Float64),
        opt("activity_id", Utf8),
        opt("zone", Utf8),
        opt("role", Utf8),
        opt("cross_discipline", Boolean),
        opt("course_id", Utf8),
        opt("provider_school", Utf8),
        opt("student_pseudonym", Utf8),
        opt("assessment_id", Utf8),
        opt("score", Float64),
        opt("max_score", Float64),
        opt("down_kbps", Float64),
        opt("up_kbps", Float64),
    ]))
}

/// The schema of the `presence` Parquet files (hive-partitioned like `events`): the classrooms
/// whose terminal sent a heartbeat that day, one row per (school, classroom) per events file
/// of the same name. It is `SELECT DISTINCT school, classroom` of that file's heartbeats, kept
/// beside it because utilisation's timetable (the days a room was on) would otherwise scan
/// every heartbeat, most of the events table.
pub fn presence_file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("school", DataType::Utf8, false), Field::new("classroom", DataType::Utf8, false)]))
}

/// The schema of the `schools` registry table.
pub fn registry_schema() -> SchemaRef {
    use DataType::*;
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    Arc::new(Schema::new(vec![
        f("school_id", Utf8),
        f("school_name", Utf8),
        f("city", Utf8),
        f("county", Utf8),
        f("alliance", Utf8),
        f("zone", Utf8),
        f("locale", Utf8),
        f("level", Utf8),
        f("enrolment", UInt32),
        f("teachers_total", UInt32),
        f("teachers_qualified", UInt32),
        f("key_teachers", UInt32),
        f("pe_art_teachers", UInt32),
        f("senior_title_teachers", UInt32),
        f("floor_area_m2", Float64),
        f("sports_area_m2", Float64),
        f("equipment_value_yuan", Float64),
        f("multimedia_classrooms", UInt32),
        f("funding_yuan", Float64),
        f("strong", Boolean),
    ]))
}

/// The schema of the dead-letter records the edge produces (JSON on Kafka; this is how the
/// warehouse would hold them).
pub fn deadletter_schema() -> SchemaRef {
    use DataType::*;
    Arc::new(Schema::new(vec![
        Field::new("edge_city", Utf8, false),
        Field::new("mqtt_topic", Utf8, false),
        Field::new("received_time", ts(), false),
        Field::new("field", Utf8, false),
        Field::new("rule", Utf8, false),
        Field::new("reason", Utf8, false),
        Field::new("raw", Utf8, false),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::REGISTRY_COLUMNS;

    #[test]
    fn registry_schema_has_the_csv_columns_in_order() {
        let names: Vec<_> = registry_schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, REGISTRY_COLUMNS);
    }

    #[test]
    fn partition_columns_are_not_in_the_files() {
        let s = event_file_schema();
        for p in EVENT_PARTITION_COLUMNS {
            assert!(s.field_with_name(p).is_err(), "{p} must live in the path only");
        }
    }
}
