use super::*;
use proptest::prelude::*;

fn small() -> WalOptions {
    WalOptions { segment_bytes: 4096, max_bytes: 64 * 1024, max_record_bytes: 1024 }
}

fn payload(i: u64) -> Vec<u8> {
    format!("event number {i} with some padding to look like JSON").into_bytes()
}

fn open(dir: &Path) -> (Wal, Recovered) {
    Wal::open(dir, small()).expect("open")
}

fn seqs(r: &Recovered) -> Vec<u64> {
    r.records.iter().map(|(s, _)| *s).collect()
}

#[test]
fn committed_records_survive_reopen_and_confirmed_ones_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, rec) = open(dir.path());
    assert!(rec.records.is_empty());
    for i in 0..100 {
        assert_eq!(wal.append(&payload(i)).unwrap(), i);
    }
    wal.commit().unwrap();
    assert!(wal.segments() > 1, "100 records of ~70 bytes roll 4 KiB segments");
    for s in (0..40).rev() {
        wal.confirm(s); // out of order on purpose
    }
    wal.confirm(77);
    wal.truncate().unwrap();
    std::mem::forget(wal); // a crash: no clean close
    let (wal, rec) = open(dir.path());
    let expect: Vec<u64> = (40..100).collect();
    // 77 was confirmed out of order but above the checkpoint: replayed again (at-least-once).
    assert_eq!(seqs(&rec), expect);
    assert_eq!(rec.records[0].1, payload(40));
    assert!(rec.damage.is_empty());
    assert_eq!(wal.unconfirmed(), 60);
}

#[test]
fn a_reader_tails_the_log_one_segment_at_a_time_while_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    for i in 0..100 {
        wal.append(&payload(i)).unwrap();
    }
    wal.commit().unwrap();
    let mut reader = WalReader::new(dir.path(), 1024, 500);
    let mut next = 0;
    let mut got = Vec::new();
    let mut appended = false;
    loop {
        let batch = reader.read(next).unwrap();
        let Some((last, _)) = batch.last() else { break };
        next = last + 1;
        assert!(batch.len() < 100, "about a chunk per call");
        got.extend(batch);
        if next >= 50 && !appended {
            appended = true;
            // The writer goes on while the reader tails it.
            for i in 100..130 {
                wal.append(&payload(i)).unwrap();
            }
            wal.commit().unwrap();
        }
    }
    assert_eq!(got.len(), 130);
    assert!(got.iter().enumerate().all(|(i, (s, p))| *s == i as u64 && p == &payload(*s)));
    // From anywhere else: from the start of the segment that holds it.
    assert_eq!(reader.read(7).unwrap()[0].0, 7);
    assert_eq!(WalReader::new(dir.path(), 1024, 1 << 20).read(129).unwrap(), vec![(129, payload(129))]);
    // Confirmed and deleted segments are skipped, not an error.
    // 4 KiB segments hold about 60 of these records: confirming 70 frees the first one.
    (0..70).for_each(|s| wal.confirm(s));
    assert_eq!(wal.truncate().unwrap(), 1);
    let first = WalReader::new(dir.path(), 1024, 1 << 20).read(0).unwrap()[0].0;
    assert!(first > 0 && first <= 70, "starts in the segment that holds record 70, got {first}");
}

#[test]
fn sequence_numbers_continue_after_everything_was_confirmed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    for i in 0..200 {
        wal.append(&payload(i)).unwrap();
    }
    wal.commit().unwrap();
    (0..200).for_each(|s| wal.confirm(s));
    assert!(wal.truncate().unwrap() > 0);
    assert_eq!(wal.segments(), 1);
    drop(wal);
    let (mut wal, rec) = open(dir.path());
    assert!(rec.records.is_empty());
    assert_eq!(wal.append(b"next").unwrap(), 200, "a reused sequence number could be mistaken for a confirmed one");
}

#[test]
fn a_torn_tail_loses_only_the_unfinished_record_and_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    for i in 0..10 {
        wal.append(&payload(i)).unwrap();
    }
    wal.commit().unwrap();
    drop(wal);
    let seg = list_segments(dir.path()).unwrap().pop().unwrap().1;
    let len = fs::metadata(&seg).unwrap().len();
    // A crash in the middle of writing record 10: its header and half its payload.
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    let mut torn = 40u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[1, 2, 3, 4, 10, 0, 0, 0, 0, 0, 0, 0, b'h', b'a', b'l', b'f']);
    f.write_all(&torn).unwrap();
    drop(f);
    let (mut wal, rec) = open(dir.path());
    assert_eq!(seqs(&rec), (0..10).collect::<Vec<_>>());
    assert_eq!(rec.damage.len(), 1);
    let d = &rec.damage[0];
    assert!(d.torn_tail);
    assert_eq!((d.offset, d.bytes), (len, torn.len() as u64));
    assert_eq!(fs::read(&d.saved_to).unwrap(), torn, "the bad bytes are kept");
    assert_eq!(fs::metadata(&seg).unwrap().len(), len, "the tail was cut so new appends follow valid frames");
    assert_eq!(wal.append(b"after").unwrap(), 10);
    wal.commit().unwrap();
    drop(wal);
    let (_, rec) = open(dir.path());
    assert!(rec.damage.is_empty(), "damage is reported once, then repaired");
    assert_eq!(rec.records.last().unwrap(), &(10, b"after".to_vec()));
}

#[test]
fn a_flipped_bit_costs_one_record_and_the_rest_are_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    for i in 0..30 {
        wal.append(&payload(i)).unwrap();
    }
    wal.commit().unwrap();
    drop(wal);
    let (_, seg) = list_segments(dir.path()).unwrap().into_iter().next().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let frame = HEADER + payload(0).len();
    // Flip a bit in the payload of record 3 and one in the length field of record 7.
    bytes[3 * frame + HEADER + 5] ^= 0x10;
    bytes[7 * frame] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    let (_, rec) = open(dir.path());
    let expect: Vec<u64> = (0..30).filter(|s| *s != 3 && *s != 7).collect();
    assert_eq!(seqs(&rec), expect);
    assert_eq!(rec.damage.len(), 2);
    assert!(rec.damage.iter().all(|d| !d.torn_tail));
    for (s, p) in &rec.records {
        assert_eq!(p, &payload(*s), "every recovered payload is intact");
    }
}

#[test]
fn a_full_log_refuses_appends_until_confirmations_free_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions { segment_bytes: 4096, max_bytes: 3 * 4096, max_record_bytes: 1024 };
    let (mut wal, _) = Wal::open(dir.path(), opts).unwrap();
    let mut n = 0;
    let err = loop {
        match wal.append(&[7u8; 500]) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, WalError::Full { .. }), "{err}");
    assert!(err.to_string().contains("full"));
    assert!(!wal.has_room_for(500));
    wal.commit().unwrap();
    (0..8).for_each(|s| wal.confirm(s)); // the first segment holds 7 frames of 516 bytes
    assert_eq!(wal.truncate().unwrap(), 1);
    assert!(wal.has_room_for(500));
    assert_eq!(wal.append(&[7u8; 500]).unwrap(), n);
}

#[test]
fn oversized_records_and_bad_options_are_refused_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    let e = wal.append(&[0u8; 2000]).unwrap_err();
    assert_eq!(e.to_string(), "WAL record of 2000 bytes is larger than the limit of 1024 bytes");
    let e = Wal::open(dir.path(), WalOptions { segment_bytes: 4096, max_bytes: 5000, max_record_bytes: 100 }).unwrap_err();
    assert!(e.to_string().contains("max_bytes = 5000"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Whatever is appended and committed, then partly confirmed, a crash and reopen replays
    /// exactly the unconfirmed records at or above the confirmed prefix, with their bytes.
    #[test]
    fn reopen_replays_every_unconfirmed_record(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..120),
        confirm_mask in proptest::collection::vec(any::<bool>(), 120),
        truncate in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path());
        for p in &payloads {
            wal.append(p).unwrap();
        }
        wal.commit().unwrap();
        for (s, c) in confirm_mask.iter().enumerate().take(payloads.len()) {
            if *c {
                wal.confirm(s as u64);
            }
        }
        let below = wal.confirmed_below();
        if truncate {
            wal.truncate().unwrap();
        }
        std::mem::forget(wal);
        let (_, rec) = open(dir.path());
        prop_assert!(rec.damage.is_empty());
        // Unconfirmed records are never lost; confirmed ones below the checkpoint are not replayed.
        for (s, p) in payloads.iter().enumerate() {
            let s = s as u64;
            let replayed = rec.records.iter().find(|(q, _)| *q == s);
            if !confirm_mask[s as usize] {
                prop_assert_eq!(replayed.map(|(_, b)| b), Some(p));
            }
            if truncate && s < below {
                prop_assert!(replayed.is_none());
            }
        }
    }

    /// Random byte corruption never makes recovery invent a record: every record it returns is
    /// one that was written, with its original bytes.
    #[test]
    fn corruption_never_yields_a_record_that_was_not_written(
        n in 1usize..60,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), WalOptions { segment_bytes: 1 << 20, max_bytes: 4 << 20, max_record_bytes: 1024 }).unwrap();
        for i in 0..n as u64 {
            wal.append(&payload(i)).unwrap();
        }
        wal.commit().unwrap();
        drop(wal);
        let (_, seg) = list_segments(dir.path()).unwrap().into_iter().next().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        for (idx, bit) in &flips {
            let i = idx.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        fs::write(&seg, &bytes).unwrap();
        let (_, rec) = Wal::open(dir.path(), WalOptions { segment_bytes: 1 << 20, max_bytes: 4 << 20, max_record_bytes: 1024 }).unwrap();
        for (s, p) in &rec.records {
            prop_assert_eq!(p, &payload(*s));
        }
        // At most one record lost per flipped bit (a flip can also break two neighbours' framing
        // only through the one frame it lands in).
        prop_assert!(rec.records.len() + flips.len() >= n);
    }
}
