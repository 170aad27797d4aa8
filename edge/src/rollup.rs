//! Windowed rollups: per classroom and per device, the events and the equipment in-use minutes
//! of each tumbling window of *event time*, produced to their own topic so dashboards and the
//! provincial centre see a city's activity minutes after it happens without scanning raw
//! events. Pure: time is passed in.
//!
//! A window closes once the edge's clock has passed its end by `allowed_lateness`; events that
//! arrive for a closed window (a terminal back from hours offline) are counted as late here and
//! still go to the events topic, so the warehouse, which computes from raw events, has them.
//! Rollups are the fast path, never the record.
//!
//! In-use time comes from equipment sessions. A session that started in time accrues into each
//! window as the window closes, so a 45-minute lesson shows in every 5-minute window it spans;
//! when it ends, the rest goes into the windows still open. A session whose start was never
//! seen is reconstructed from its end and `duration_s`, within the open windows.

use std::collections::BTreeMap;

// Every accepted event looks up its classroom here: hashbrown's foldhash (seeded per process)
// rather than std's SipHash, which was 2% of the edge's CPU. The keys come from authenticated
// terminals' own topics, so they are bounded by the city's provisioning.
use hashbrown::HashMap;

use chrono::{DateTime, Duration, Utc};
use edubrain_schemas::{Event, EventBody};
use serde::Serialize;

/// Window length and how long after its end a window still takes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupConfig {
    pub window: Duration,
    pub allowed_lateness: Duration,
}

/// One closed window of one classroom (`device_id` = None) or one device in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollup {
    pub city: String,
    pub school: String,
    pub classroom: String,
    /// None: the whole classroom.
    pub device_id: Option<String>,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub events: u64,
    pub events_by_type: BTreeMap<&'static str, u64>,
    /// Minutes of equipment sessions inside the window; for a classroom, summed over its
    /// devices (two projectors for ten minutes are twenty device-minutes).
    pub device_in_use_minutes: f64,
}

#[derive(Debug, Default, Clone)]
struct Cell {
    events: u64,
    by_type: BTreeMap<&'static str, u64>,
    in_use_s: f64,
}

impl Cell {
    fn count(&mut self, kind: &'static str) {
        self.events += 1;
        *self.by_type.entry(kind).or_default() += 1;
    }
}

/// One classroom's cells in one window. Nested maps looked up by `&str`, so the hot path
/// (every accepted event) allocates only for a classroom or device new to the window.
#[derive(Debug, Default)]
struct RoomCells {
    room: Cell,
    devices: HashMap<String, Cell>,
}

impl RoomCells {
    fn device(&mut self, device: &str) -> &mut Cell {
        if !self.devices.contains_key(device) {
            self.devices.insert(device.to_string(), Cell::default());
        }
        self.devices.get_mut(device).expect("just inserted")
    }
}

/// Window start (ms) -> classroom -> cells.
type Windows = BTreeMap<i64, HashMap<String, RoomCells>>;

fn room<'a>(windows: &'a mut Windows, start_ms: i64, classroom: &str) -> &'a mut RoomCells {
    let rooms = windows.entry(start_ms).or_default();
    if !rooms.contains_key(classroom) {
        rooms.insert(classroom.to_string(), RoomCells::default());
    }
    rooms.get_mut(classroom).expect("just inserted")
}

#[derive(Debug, Clone)]
struct OpenSession {
    device_id: String,
    start: DateTime<Utc>,
}

/// What [`Rollups::observe`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Counted,
    /// Its window had closed: in the events topic, not in a rollup.
    Late,
}

/// Sessions open longer than this are taken to have lost their end event and are dropped.
const STALE_SESSION: Duration = Duration::hours(24);

#[derive(Debug)]
pub struct Rollups {
    config: RollupConfig,
    cells: Windows,
    /// classroom -> (city, school), for the output.
    places: HashMap<String, (String, String)>,
    /// (classroom, session_id) -> session.
    open: HashMap<(String, String), OpenSession>,
    /// Every window ending at or before this instant is closed.
    closed_until: DateTime<Utc>,
}

impl Rollups {
    pub fn new(config: RollupConfig, now: DateTime<Utc>) -> Self {
        assert!(config.window > Duration::zero(), "window must be positive");
        let closed_until = window_start(config.window, now - config.allowed_lateness);
        Self { config, cells: BTreeMap::new(), places: HashMap::new(), open: HashMap::new(), closed_until }
    }

    fn window_start(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        window_start(self.config.window, t)
    }

    /// Sessions currently open (a gauge).
    pub fn open_sessions(&self) -> usize {
        self.open.len()
    }

    /// Counts an accepted event into its window (and its device's), and tracks sessions.
    pub fn observe(&mut self, event: &Event) -> Observed {
        let h = &event.header;
        let t = h.event_time;
        if !self.places.contains_key(&h.classroom) {
            self.places.insert(h.classroom.clone(), (h.city.clone(), h.school.clone()));
        }
        match &event.body {
            EventBody::EquipmentSessionStarted(s) => {
                self.open.insert((h.classroom.clone(), s.session_id.clone()), OpenSession { device_id: s.device_id.clone(), start: t });
            }
            EventBody::EquipmentSessionEnded(s) => {
                let start = match self.open.remove(&(h.classroom.clone(), s.session_id.clone())) {
                    Some(open) => open.start,
                    None => t - Duration::milliseconds((s.duration_s * 1000.0) as i64),
                };
                // What the closing windows have not accrued yet.
                let from = start.max(self.closed_until);
                self.accrue(&h.classroom, &s.device_id, from, t);
            }
            _ => {}
        }
        let start = self.window_start(t);
        if start + self.config.window <= self.closed_until {
            return Observed::Late;
        }
        let kind = event.event_type().as_str();
        let cells = room(&mut self.cells, start.timestamp_millis(), &h.classroom);
        cells.room.count(kind);
        if let Some(device) = device_of(&event.body) {
            cells.device(device).count(kind);
        }
        Observed::Counted
    }

    /// Adds in-use seconds of `device` over [from, to) to the open windows they fall in.
    fn accrue(&mut self, classroom: &str, device: &str, from: DateTime<Utc>, to: DateTime<Utc>) {
        let mut w = self.window_start(from);
        while w < to {
            let end = w + self.config.window;
            let secs = (to.min(end) - from.max(w)).num_milliseconds() as f64 / 1000.0;
            if secs > 0.0 && end > self.closed_until {
                let cells = room(&mut self.cells, w.timestamp_millis(), classroom);
                cells.room.in_use_s += secs;
                cells.device(device).in_use_s += secs;
            }
            w = end;
        }
    }

    /// Closes every window that ended `allowed_lateness` before `now` and returns its rollups,
    /// oldest first.
    pub fn close(&mut self, now: DateTime<Utc>) -> Vec<Rollup> {
        let until = self.window_start(now - self.config.allowed_lateness);
        if until <= self.closed_until {
            return Vec::new();
        }
        // Open sessions accrue into the windows closing now.
        self.open.retain(|_, s| now - s.start < STALE_SESSION);
        let open: Vec<(String, OpenSession)> = self.open.iter().map(|((room, _), s)| (room.clone(), s.clone())).collect();
        for (room, s) in open {
            self.accrue(&room, &s.device_id, s.start.max(self.closed_until), until);
        }
        self.closed_until = until;
        let still_open = self.cells.split_off(&until.timestamp_millis());
        let closed = std::mem::replace(&mut self.cells, still_open);
        let mut out = Vec::new();
        for (start, rooms) in closed {
            let window_start = DateTime::from_timestamp_millis(start).expect("in range");
            let rollup = |classroom: &str, device_id: Option<String>, cell: Cell| {
                let (city, school) = self.places.get(classroom).cloned().unwrap_or_default();
                Rollup {
                    city,
                    school,
                    classroom: classroom.to_string(),
                    device_id,
                    window_start,
                    window_end: window_start + self.config.window,
                    events: cell.events,
                    events_by_type: cell.by_type,
                    device_in_use_minutes: (cell.in_use_s / 60.0 * 1000.0).round() / 1000.0,
                }
            };
            let mut rooms: Vec<_> = rooms.into_iter().collect();
            rooms.sort_by(|a, b| a.0.cmp(&b.0));
            for (classroom, cells) in rooms {
                out.push(rollup(&classroom, None, cells.room));
                let mut devices: Vec<_> = cells.devices.into_iter().collect();
                devices.sort_by(|a, b| a.0.cmp(&b.0));
                out.extend(devices.into_iter().map(|(d, cell)| rollup(&classroom, Some(d), cell)));
            }
        }
        out
    }
}

/// Start of the tumbling window of length `window` that holds `t`.
fn window_start(window: Duration, t: DateTime<Utc>) -> DateTime<Utc> {
    let ms = t.timestamp_millis();
    DateTime::from_timestamp_millis(ms - ms.rem_euclid(window.num_milliseconds())).expect("in range")
}

fn device_of(body: &EventBody) -> Option<&str> {
    match body {
        EventBody::DeviceHeartbeat(p) => Some(&p.device_id),
        EventBody::EquipmentSessionStarted(p) => Some(&p.device_id),
        EventBody::EquipmentSessionEnded(p) => Some(&p.device_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use edubrain_schemas::event::{BandwidthSampled, Equipment, EquipmentSessionEnded, EquipmentSessionStarted};
    use edubrain_schemas::{Header, SCHEMA_VERSION};

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, 0).unwrap()
    }

    fn event(room: &str, t: DateTime<Utc>, body: EventBody) -> Event {
        Event {
            header: Header {
                event_id: uuid::Uuid::new_v4(),
                schema_version: SCHEMA_VERSION,
                city: "c01".into(),
                school: "s1".into(),
                classroom: room.into(),
                terminal: "t".into(),
                event_time: t,
            },
            body,
        }
    }

    fn started(room: &str, t: DateTime<Utc>, session: &str) -> Event {
        event(
            room,
            t,
            EventBody::EquipmentSessionStarted(EquipmentSessionStarted {
                device_id: "proj-1".into(),
                equipment: Equipment::Projector,
                session_id: session.into(),
            }),
        )
    }

    fn ended(room: &str, t: DateTime<Utc>, session: &str, duration_s: f64) -> Event {
        event(
            room,
            t,
            EventBody::EquipmentSessionEnded(EquipmentSessionEnded {
                device_id: "proj-1".into(),
                equipment: Equipment::Projector,
                session_id: session.into(),
                duration_s,
            }),
        )
    }

    fn bandwidth(room: &str, t: DateTime<Utc>) -> Event {
        event(room, t, EventBody::BandwidthSampled(BandwidthSampled { down_kbps: 1.0, up_kbps: 1.0 }))
    }

    fn five_minutes() -> RollupConfig {
        RollupConfig { window: Duration::minutes(5), allowed_lateness: Duration::minutes(2) }
    }

    fn find<'a>(rs: &'a [Rollup], start: DateTime<Utc>, device: Option<&str>) -> &'a Rollup {
        rs.iter()
            .find(|r| r.window_start == start && r.device_id.as_deref() == device)
            .unwrap_or_else(|| panic!("no rollup {start} {device:?} in {rs:#?}"))
    }

    #[test]
    fn counts_events_per_window_and_closes_after_the_lateness() {
        let mut r = Rollups::new(five_minutes(), at(8, 0));
        assert_eq!(r.observe(&bandwidth("r1", at(8, 1))), Observed::Counted);
        assert_eq!(r.observe(&bandwidth("r1", at(8, 4))), Observed::Counted);
        assert_eq!(r.observe(&bandwidth("r1", at(8, 6))), Observed::Counted);
        assert!(r.close(at(8, 6)).is_empty(), "08:00-08:05 is open until 08:07");
        let out = r.close(at(8, 7));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].events, out[0].events_by_type["bandwidth_sampled"]), (2, 2));
        assert_eq!((out[0].city.as_str(), out[0].school.as_str(), out[0].window_end), ("c01", "s1", at(8, 5)));
        // Now 08:00-08:05 is closed: a straggler is late, its window is not reopened.
        assert_eq!(r.observe(&bandwidth("r1", at(8, 3))), Observed::Late);
        let out = r.close(at(8, 12));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].window_start, out[0].events), (at(8, 5), 1));
    }

    #[test]
    fn a_long_session_is_spread_over_every_window_it_spans() {
        let mut r = Rollups::new(five_minutes(), at(8, 0));
        r.observe(&started("r1", at(8, 2), "s1"));
        // While the session runs, each closing window gets its share.
        let first = r.close(at(8, 7));
        assert_eq!(find(&first, at(8, 0), Some("proj-1")).device_in_use_minutes, 3.0);
        assert_eq!(find(&first, at(8, 0), None).device_in_use_minutes, 3.0);
        let second = r.close(at(8, 12));
        assert_eq!(find(&second, at(8, 5), Some("proj-1")).device_in_use_minutes, 5.0, "a window with no events still shows use");
        assert_eq!(find(&second, at(8, 5), Some("proj-1")).events, 0);
        // It ends at 08:13:30: the rest lands in the open window 08:10-08:15.
        r.observe(&ended("r1", at(8, 13) + Duration::seconds(30), "s1", 690.0));
        let third = r.close(at(8, 17));
        assert_eq!(find(&third, at(8, 10), Some("proj-1")).device_in_use_minutes, 3.5);
        let total: f64 = [first, second, third].iter().flatten().filter(|x| x.device_id.is_some()).map(|x| x.device_in_use_minutes).sum();
        assert_eq!(total, 11.5, "08:02 to 08:13:30, counted once");
        assert_eq!(r.open_sessions(), 0);
    }

    #[test]
    fn a_session_whose_start_was_missed_is_rebuilt_from_its_duration() {
        let mut r = Rollups::new(five_minutes(), at(8, 0));
        r.observe(&ended("r1", at(8, 4), "s9", 180.0));
        let out = r.close(at(8, 7));
        assert_eq!(find(&out, at(8, 0), Some("proj-1")).device_in_use_minutes, 3.0);
    }

    #[test]
    fn classrooms_are_kept_apart_and_output_is_oldest_first() {
        let mut r = Rollups::new(five_minutes(), at(8, 0));
        r.observe(&bandwidth("r2", at(8, 6)));
        r.observe(&bandwidth("r1", at(8, 1)));
        r.observe(&bandwidth("r2", at(8, 2)));
        let out = r.close(at(8, 20));
        let keys: Vec<(DateTime<Utc>, &str)> = out.iter().map(|x| (x.window_start, x.classroom.as_str())).collect();
        assert_eq!(keys, [(at(8, 0), "r1"), (at(8, 0), "r2"), (at(8, 5), "r2")]);
    }
}
