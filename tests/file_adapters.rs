//! File adapters: NDJSON and CSV sources and sinks, byte-exact positions, tail mode,
//! dead letters.

mod support;
use support::TempFile;

use std::path::Path;
use std::time::Duration;

use batchstream::adapters::CollectSink;
use batchstream::adapters::file::{
    CsvSink, CsvSource, FilePosition, NdjsonSink, NdjsonSource, dead_letter_file,
};
use batchstream::checkpoint::MemoryCheckpointStore;
use batchstream::{
    BatchExecutor, Boundedness, DeadLetter, Error, Outcome, Pipeline, RecordErrorKind, Result,
    Sink, Source, SourceBatch, StreamExecutor,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    id: u32,
    name: String,
    amount: i64,
}

fn rec(id: u32) -> Rec {
    Rec {
        id,
        name: format!("n{id}"),
        amount: i64::from(id) * 10 - 7,
    }
}

/// Everything a source yields until its end, as (records, rejected, last position).
async fn drain<S>(
    source: &mut S,
    max: usize,
) -> (Vec<S::Item>, Vec<DeadLetter>, Option<S::Position>)
where
    S: Source,
{
    let mut records = Vec::new();
    let mut rejected = Vec::new();
    let mut last = None;
    while let Some(batch) = source.next_batch(max).await.unwrap() {
        assert!(batch.records.len() + batch.rejected.len() <= max);
        records.extend(batch.records);
        rejected.extend(batch.rejected);
        last = Some(batch.position);
    }
    (records, rejected, last)
}

/// Byte offset of the start of each line of `text` (1-based line `n` is at index `n - 1`).
fn line_offsets(text: &str) -> Vec<u64> {
    let mut offsets = vec![0u64];
    for (i, b) in text.bytes().enumerate() {
        if b == b'\n' {
            offsets.push(i as u64 + 1);
        }
    }
    offsets
}

// ---------------------------------------------------------------- round trips

#[tokio::test]
async fn ndjson_round_trip_sink_to_source() -> Result<()> {
    let file = TempFile::new("round.ndjson");
    let all: Vec<Rec> = (0..250).map(rec).collect();

    let mut sink = NdjsonSink::create(file.path())?;
    sink.write(all[..100].to_vec()).await?;
    sink.write(all[100..].to_vec()).await?;
    sink.flush().await?;
    assert_eq!(file.read().lines().count(), 250);

    let mut source = NdjsonSource::<Rec>::open(file.path())?;
    assert_eq!(source.boundedness(), Boundedness::Bounded);
    let (records, rejected, last) = drain(&mut source, 64).await;
    assert_eq!(records, all);
    assert!(rejected.is_empty());
    assert_eq!(
        last,
        Some(FilePosition {
            offset: file.len(),
            line: 250
        })
    );

    // Appending keeps what is there.
    let mut sink = NdjsonSink::append(file.path())?;
    sink.write(vec![rec(250)]).await?;
    sink.flush().await?;
    let (records, _, _) = drain(&mut NdjsonSource::<Rec>::open(file.path())?, 1000).await;
    assert_eq!(records.len(), 251);
    assert_eq!(records[250], rec(250));

    // `create` truncates.
    let mut sink = NdjsonSink::create(file.path())?;
    sink.write(vec![rec(7)]).await?;
    sink.flush().await?;
    let (records, _, _) = drain(&mut NdjsonSource::<Rec>::open(file.path())?, 1000).await;
    assert_eq!(records, vec![rec(7)]);
    Ok(())
}

#[tokio::test]
async fn csv_round_trip_sink_to_source_writes_the_header_once() -> Result<()> {
    let file = TempFile::new("round.csv");
    let mut all: Vec<Rec> = (0..120).map(rec).collect();
    // Fields that need quoting survive.
    all[3].name = "comma, \"quoted\" and 'single'".into();
    all[4].name = String::new();
    all[5].name = "  spaces  ".into();
    all[6].name = "ünïcödé ✓".into();

    let mut sink = CsvSink::create(file.path())?;
    sink.write(all[..50].to_vec()).await?;
    sink.write(Vec::new()).await?;
    sink.write(all[50..].to_vec()).await?;
    sink.flush().await?;
    let text = file.read();
    assert!(text.starts_with("id,name,amount\n"), "{text}");
    assert_eq!(text.matches("id,name,amount").count(), 1);

    let mut source = CsvSource::<Rec>::open(file.path())?;
    assert_eq!(source.headers(), Some(vec!["id", "name", "amount"]));
    let (records, rejected, last) = drain(&mut source, 32).await;
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(records, all);
    assert_eq!(
        last,
        Some(FilePosition {
            offset: file.len(),
            line: 121
        })
    );

    // Appending to a non-empty file adds rows, not a second header.
    let mut sink = CsvSink::append(file.path())?;
    sink.write(vec![rec(500)]).await?;
    sink.flush().await?;
    assert_eq!(file.read().matches("id,name,amount").count(), 1);
    let (records, _, _) = drain(&mut CsvSource::<Rec>::open(file.path())?, 1000).await;
    assert_eq!(records.len(), 121);
    assert_eq!(records[120], rec(500));

    // A tuple type decodes by position.
    let (tuples, _, _) = drain(
        &mut CsvSource::<(u32, String, i64)>::open(file.path())?,
        1000,
    )
    .await;
    assert_eq!(tuples[0], (0, "n0".to_string(), -7));
    Ok(())
}

#[tokio::test]
async fn crlf_lines_and_a_final_line_without_newline_are_read_in_bounded_mode() -> Result<()> {
    let file = TempFile::new("crlf.ndjson");
    file.write(
        "{\"id\":1,\"name\":\"a\",\"amount\":1}\r\n\r\n{\"id\":2,\"name\":\"b\",\"amount\":2}",
    );
    let (records, rejected, last) = drain(&mut NdjsonSource::<Rec>::open(file.path())?, 10).await;
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(records.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        last,
        Some(FilePosition {
            offset: file.len(),
            line: 3
        })
    );

    let csv = TempFile::new("crlf.csv");
    csv.write("id,name,amount\r\n1,a,1\r\n2,b,2");
    let (records, rejected, _) = drain(&mut CsvSource::<Rec>::open(csv.path())?, 10).await;
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(records.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
    Ok(())
}

#[tokio::test]
async fn empty_files_end_at_once() -> Result<()> {
    let file = TempFile::new("empty.ndjson");
    file.write("");
    assert!(
        NdjsonSource::<Rec>::open(file.path())?
            .next_batch(10)
            .await?
            .is_none()
    );
    let mut csv = CsvSource::<Rec>::open(file.path())?;
    assert_eq!(csv.headers(), None);
    assert!(csv.next_batch(10).await?.is_none());

    // A header and no rows.
    file.write("id,name,amount\n");
    assert!(
        CsvSource::<Rec>::open(file.path())?
            .next_batch(10)
            .await?
            .is_none()
    );
    Ok(())
}

// ---------------------------------------------------------------- malformed input

#[tokio::test]
async fn malformed_ndjson_lines_become_dead_letters_with_exact_locations() -> Result<()> {
    let file = TempFile::new("bad.ndjson");
    let mut bytes: Vec<u8> = Vec::new();
    bytes.extend_from_slice(b"{\"id\":1,\"name\":\"a\",\"amount\":1}\n"); // line 1
    bytes.extend_from_slice(b"{\"id\":2,\"name\":\"b\",\"amount\":2}\n"); // line 2
    bytes.extend_from_slice(b"{\"id\":3,\"name\":\"c\",\n"); // line 3: truncated json
    bytes.extend_from_slice(b"\n"); // line 4: blank
    bytes.extend_from_slice(b"   \n"); // line 5: blank
    bytes.extend_from_slice(b"{\"id\":\"four\",\"name\":\"d\",\"amount\":4}\n"); // line 6: wrong shape
    bytes.extend_from_slice(b"{\"id\":5,\"name\":\"\xff\xfe\",\"amount\":5}\n"); // line 7: bad utf-8
    bytes.extend_from_slice(b"{\"id\":6,\"name\":\"f\",\"amount\":6}\n"); // line 8
    bytes.extend_from_slice(b"{\"id\":7,\"name\":\"g\",\"amount\":7}\n"); // line 9
    file.write(&bytes);
    let offsets = line_offsets(&String::from_utf8_lossy(&bytes));

    let mut source = NdjsonSource::<Rec>::open(file.path())?;
    let (records, rejected, last) = drain(&mut source, 2).await;
    assert_eq!(
        records.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![1, 2, 6, 7]
    );
    assert_eq!(rejected.len(), 3);
    for (letter, line) in rejected.iter().zip([3u64, 6, 7]) {
        let e = &letter.error;
        assert_eq!(e.kind, RecordErrorKind::Parse);
        assert_eq!(letter.kind(), RecordErrorKind::Parse);
        assert_eq!(e.stage, "ndjson");
        assert_eq!(e.location.file.as_deref(), Some(file.path()));
        assert_eq!(e.location.line, Some(line), "{e}");
        assert_eq!(e.location.offset, Some(offsets[line as usize - 1]), "{e}");
        assert!(!e.message.is_empty());
        assert_eq!(letter.attempts, 1);
    }
    assert_eq!(
        rejected[0].raw.as_deref(),
        Some("{\"id\":3,\"name\":\"c\",")
    );
    // serde_json's position is given as a column, not as a (wrong) line of the file.
    let message = &rejected[0].error.message;
    assert!(message.ends_with("at column 19"), "{message}");
    assert!(!message.contains("line 1"), "{message}");
    assert!(rejected[1].raw.as_deref().unwrap().contains("four"));
    assert!(rejected[2].raw.as_deref().unwrap().contains('\u{fffd}'));
    assert!(
        rejected[2].error.message.contains("utf-8"),
        "{}",
        rejected[2].error.message
    );
    assert_eq!(last.unwrap().line, 9);
    Ok(())
}

#[tokio::test]
async fn malformed_csv_rows_become_dead_letters_with_exact_locations() -> Result<()> {
    let file = TempFile::new("bad.csv");
    let text = "id,name,amount\n\
                1,a,10\n\
                2,b\n\
                3,c,not-a-number\n\
                \n\
                4,d,40\n\
                5,e,50,extra\n\
                6,\"multi\n\
                line\",60\n\
                7,\"unterminated,70\n\
                8,h,80\n";
    file.write(text);
    let offsets = line_offsets(text);

    let mut source = CsvSource::<Rec>::open(file.path())?;
    let (records, rejected, _) = drain(&mut source, 3).await;
    assert_eq!(
        records.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![1, 4, 8]
    );
    let lines: Vec<u64> = rejected
        .iter()
        .map(|l| l.error.location.line.unwrap())
        .collect();
    assert_eq!(lines, vec![3, 4, 7, 8, 9, 10]);
    for letter in &rejected {
        let e = &letter.error;
        assert_eq!(e.kind, RecordErrorKind::Parse);
        assert_eq!(e.stage, "csv");
        assert_eq!(e.location.file.as_deref(), Some(file.path()));
        let line = e.location.line.unwrap();
        assert_eq!(e.location.offset, Some(offsets[line as usize - 1]), "{e}");
        let raw = letter.raw.as_deref().unwrap();
        assert_eq!(raw, text.lines().nth(line as usize - 1).unwrap());
    }
    assert!(
        rejected[0].error.message.contains("2 fields"),
        "{}",
        rejected[0].error.message
    );
    assert!(
        rejected[1].error.message.contains("amount"),
        "{}",
        rejected[1].error.message
    );
    assert!(
        rejected[2].error.message.contains("4 fields"),
        "{}",
        rejected[2].error.message
    );
    // A quoted field spanning lines is never mis-read as a row.
    assert!(
        rejected[3].error.message.contains("unterminated"),
        "{}",
        rejected[3].error.message
    );
    assert!(
        rejected[5].error.message.contains("unterminated"),
        "{}",
        rejected[5].error.message
    );
    Ok(())
}

#[tokio::test]
async fn an_unterminated_quote_is_rejected_even_when_the_fields_would_fit() -> Result<()> {
    // `name` is the last column and optional: read line by line, `3,"multi` would
    // decode as a full row if the open quote went unnoticed.
    #[derive(Debug, Deserialize)]
    struct Opt {
        id: u32,
        #[allow(dead_code)]
        name: Option<String>,
    }
    let file = TempFile::new("quote.csv");
    file.write("id,name\n1,x\n3,\"multi\nline\"\n4,y\n");
    let (records, rejected, _) = drain(&mut CsvSource::<Opt>::open(file.path())?, 10).await;
    assert_eq!(records.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 4]);
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0].error.location.line, Some(3));
    assert!(rejected[0].error.message.contains("unterminated"));
    assert_eq!(rejected[1].error.location.line, Some(4));
    Ok(())
}

#[tokio::test]
async fn a_bad_csv_header_fails_open() {
    let file = TempFile::new("badheader.csv");
    file.write(b"id,\"name\n1,a\n");
    let err = CsvSource::<Rec>::open(file.path()).unwrap_err();
    assert!(matches!(err, Error::Source { .. }), "{err:?}");
    assert!(err.to_string().contains("header"), "{err}");
}

// ---------------------------------------------------------------- seek / resume

/// A tiny deterministic generator for "random" splits.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Reads `first_batches` batches of varying sizes from a fresh source, then resumes a
/// second fresh source from the last position; both halves together must be exactly
/// the whole input.
async fn check_resume<S, F>(open: F, expected: &[Rec], expected_rejected: usize, rng: &mut Lcg)
where
    S: Source<Item = Rec, Position = FilePosition>,
    F: Fn() -> S,
{
    let mut first = open();
    let mut seen = Vec::new();
    let mut rejected = 0;
    let mut position = FilePosition::default();
    let batches = rng.below(6) as usize;
    for _ in 0..batches {
        let max = 1 + rng.below(7) as usize;
        let Some(SourceBatch {
            records,
            rejected: r,
            position: p,
        }) = first.next_batch(max).await.unwrap()
        else {
            break;
        };
        seen.extend(records);
        rejected += r.len();
        // Positions survive a checkpoint round trip.
        position = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    }
    drop(first);

    let mut second = open();
    second.seek(position.clone()).await.unwrap();
    let max = 1 + rng.below(9) as usize;
    let (rest, r, _) = drain(&mut second, max).await;
    rejected += r.len();
    seen.extend(rest);
    assert_eq!(seen, expected, "resumed from {position:?}");
    assert_eq!(rejected, expected_rejected, "resumed from {position:?}");
}

#[tokio::test]
async fn ndjson_seek_resumes_exactly_at_the_next_record() -> Result<()> {
    let file = TempFile::new("seek.ndjson");
    let all: Vec<Rec> = (0..40).map(rec).collect();
    let mut text = String::new();
    for (i, r) in all.iter().enumerate() {
        text.push_str(&serde_json::to_string(r).unwrap());
        text.push('\n');
        if i % 9 == 4 {
            text.push_str("garbage\n\n");
        }
    }
    file.write(&text);
    let bad = text.matches("garbage").count();

    let mut rng = Lcg(42);
    for _ in 0..60 {
        check_resume(
            || NdjsonSource::<Rec>::open(file.path()).unwrap(),
            &all,
            bad,
            &mut rng,
        )
        .await;
    }
    // Resuming at the end yields nothing.
    let mut s = NdjsonSource::<Rec>::open(file.path())?;
    s.seek(FilePosition {
        offset: file.len(),
        line: 99,
    })
    .await?;
    assert!(s.next_batch(10).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn csv_seek_resumes_exactly_at_the_next_row_with_the_header_kept() -> Result<()> {
    let file = TempFile::new("seek.csv");
    let all: Vec<Rec> = (0..40).map(rec).collect();
    let mut text = String::from("id,name,amount\n");
    for (i, r) in all.iter().enumerate() {
        text.push_str(&format!("{},{},{}\n", r.id, r.name, r.amount));
        if i % 7 == 3 {
            text.push_str("short,row\n\n");
        }
    }
    file.write(&text);
    let bad = text.matches("short,row").count();

    let mut rng = Lcg(7);
    for _ in 0..60 {
        check_resume(
            || CsvSource::<Rec>::open(file.path()).unwrap(),
            &all,
            bad,
            &mut rng,
        )
        .await;
    }

    // A rejected row after a resume still has its true line number.
    let mut s = CsvSource::<Rec>::open(file.path())?;
    let first = s.next_batch(2).await?.unwrap();
    assert_eq!(first.position.line, 3);
    let mut resumed = CsvSource::<Rec>::open(file.path())?;
    resumed.seek(first.position).await?;
    let (_, rejected, _) = drain(&mut resumed, 100).await;
    let offsets = line_offsets(&text);
    let line = rejected[0].error.location.line.unwrap();
    assert_eq!(line, 6);
    assert_eq!(
        text.lines().nth(line as usize - 1),
        rejected[0].raw.as_deref()
    );
    assert_eq!(
        rejected[0].error.location.offset,
        Some(offsets[line as usize - 1])
    );
    Ok(())
}

#[tokio::test]
async fn seek_to_a_position_the_file_cannot_have_is_an_error() -> Result<()> {
    let file = TempFile::new("seekbad.ndjson");
    file.write("{\"id\":1,\"name\":\"a\",\"amount\":1}\n{\"id\":2,\"name\":\"b\",\"amount\":2}\n");

    let mut s = NdjsonSource::<Rec>::open(file.path())?;
    let err = s
        .seek(FilePosition {
            offset: 10_000,
            line: 3,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Source { .. }), "{err:?}");
    assert!(err.to_string().contains("10000"), "{err}");

    let mut s = NdjsonSource::<Rec>::open(file.path())?;
    let err = s
        .seek(FilePosition { offset: 5, line: 1 })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not the start of a line"), "{err}");

    let csv = TempFile::new("seekbad.csv");
    csv.write("id,name,amount\n1,a,1\n");
    let mut s = CsvSource::<Rec>::open(csv.path())?;
    let err = s
        .seek(FilePosition { offset: 3, line: 0 })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("inside the csv header"), "{err}");

    // A fresh csv source resuming mid-file reads the header from the start first.
    let mut s = CsvSource::<Rec>::open(csv.path())?;
    let after_header = FilePosition {
        offset: "id,name,amount\n".len() as u64,
        line: 1,
    };
    s.seek(after_header).await?;
    let batch = s.next_batch(10).await?.unwrap();
    assert_eq!(
        batch.records,
        vec![Rec {
            id: 1,
            name: "a".into(),
            amount: 1
        }]
    );
    Ok(())
}

// ---------------------------------------------------------------- tail mode

#[tokio::test(start_paused = true)]
async fn ndjson_tail_follows_appends_and_waits_for_partial_lines() -> Result<()> {
    let file = TempFile::new("tail.ndjson");
    file.write("{\"id\":1,\"name\":\"a\",\"amount\":1}\n{\"id\":2,\"name\":\"b\",\"amount\":2}\n{\"id\":3,");
    let mut source = NdjsonSource::<Rec>::open(file.path())?.tail(Duration::from_millis(50));
    assert_eq!(source.boundedness(), Boundedness::Unbounded);

    let batch = source.next_batch(10).await?.unwrap();
    assert_eq!(
        batch.records.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let after_two = batch.position.clone();
    assert_eq!(after_two.line, 2);

    // Only a partial line: nothing comes, and giving up (dropping the future) loses
    // nothing.
    let waited = tokio::time::timeout(Duration::from_secs(2), source.next_batch(10)).await;
    assert!(waited.is_err(), "a partial line was delivered: {waited:?}");
    assert_eq!(source.position(), after_two);

    // The line is completed while the source waits.
    let path = file.path().to_path_buf();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"\"name\":\"c\",\"amount\":3}\n{\"id\":4,\"name\":\"d\",\"amount\":4}\n")
            .unwrap();
    });
    let batch = source.next_batch(10).await?.unwrap();
    writer.await.unwrap();
    assert_eq!(
        batch.records.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(batch.rejected.is_empty());
    assert_eq!(
        batch.position,
        FilePosition {
            offset: file.len(),
            line: 4
        }
    );

    // A malformed line arriving later is rejected with its location.
    let bad_offset = file.len();
    file.append("oops\n");
    let batch = source.next_batch(10).await?.unwrap();
    assert!(batch.records.is_empty());
    assert_eq!(batch.rejected[0].error.location.line, Some(5));
    assert_eq!(batch.rejected[0].error.location.offset, Some(bad_offset));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn csv_tail_waits_for_the_header_and_for_complete_rows() -> Result<()> {
    let file = TempFile::new("tail.csv");
    file.write("id,na");
    let mut source = CsvSource::<Rec>::open(file.path())?.tail(Duration::from_millis(20));
    assert_eq!(source.headers(), None);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), source.next_batch(10))
            .await
            .is_err()
    );

    file.append("me,amount\n1,a,10\n2,b,2");
    let batch = source.next_batch(10).await?.unwrap();
    assert_eq!(source.headers(), Some(vec!["id", "name", "amount"]));
    assert_eq!(
        batch.records,
        vec![Rec {
            id: 1,
            name: "a".into(),
            amount: 10
        }]
    );
    // `2,b,2` could still grow into `2,b,20`: not read yet.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), source.next_batch(10))
            .await
            .is_err()
    );
    file.append("0\n");
    let batch = source.next_batch(10).await?.unwrap();
    assert_eq!(
        batch.records,
        vec![Rec {
            id: 2,
            name: "b".into(),
            amount: 20
        }]
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_tailed_file_that_shrinks_is_an_error() -> Result<()> {
    let file = TempFile::new("shrink.ndjson");
    file.write("{\"id\":1,\"name\":\"a\",\"amount\":1}\n");
    let mut source = NdjsonSource::<Rec>::open(file.path())?.tail(Duration::from_millis(10));
    source.next_batch(10).await?.unwrap();
    file.write("");
    let err = source.next_batch(10).await.unwrap_err();
    assert!(err.to_string().contains("shrank"), "{err}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_tailed_source_under_the_stream_executor_resumes_from_its_checkpoint() -> Result<()> {
    let file = TempFile::new("stream.ndjson");
    file.write("");
    let store = MemoryCheckpointStore::new();

    // First run: two lines arrive, then shutdown.
    let (sink, out) = CollectSink::new();
    let pipeline = Pipeline::new(
        "tail",
        NdjsonSource::<Rec>::open(file.path())?.tail(Duration::from_millis(10)),
        batchstream::transform::identity::<Rec>(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let path = file.path().to_path_buf();
    let feed = async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = NdjsonSink::append(&path).unwrap();
        s.write(vec![rec(1), rec(2)]).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let report = StreamExecutor::new().run_until(pipeline, feed).await?;
    assert!(matches!(report.outcome, Outcome::Stopped), "{report:?}");
    assert_eq!(out.items(), vec![rec(1), rec(2)]);

    // More lines arrive while it is down; the restart reads only those.
    let mut s = NdjsonSink::append(file.path())?;
    s.write(vec![rec(3)]).await?;
    s.flush().await?;
    let (sink, out) = CollectSink::new();
    let pipeline = Pipeline::new(
        "tail",
        NdjsonSource::<Rec>::open(file.path())?.tail(Duration::from_millis(10)),
        batchstream::transform::identity::<Rec>(),
        sink,
    )
    .with_checkpoint_store(store.clone());
    let stop = tokio::time::sleep(Duration::from_millis(200));
    StreamExecutor::new().run_until(pipeline, stop).await?;
    assert_eq!(out.items(), vec![rec(3)]);
    Ok(())
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn a_missing_file_is_an_io_error_naming_the_path() {
    let missing = std::env::temp_dir().join(format!(
        "batchstream-no-such-dir-{}/missing.ndjson",
        std::process::id()
    ));
    for err in [
        NdjsonSource::<Rec>::open(&missing).unwrap_err(),
        CsvSource::<Rec>::open(&missing).unwrap_err(),
        NdjsonSink::<Rec>::create(&missing).unwrap_err(),
        CsvSink::<Rec>::create(&missing).unwrap_err(),
        dead_letter_file(&missing).unwrap_err(),
    ] {
        match &err {
            Error::Io { path, source } => {
                assert_eq!(path, &missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
        assert!(err.to_string().contains("missing.ndjson"), "{err}");
    }
}

#[tokio::test]
async fn sink_errors_name_the_file() -> Result<()> {
    // `/dev/full` accepts the open and fails every write with ENOSPC.
    let full = Path::new("/dev/full");
    if full.exists() {
        let mut sink = NdjsonSink::<Rec>::create(full)?;
        sink.write(vec![rec(1)]).await?;
        let err = sink.flush().await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Sink {
                    operation: "flush",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("/dev/full"), "{err}");
    }

    // A record serde_json cannot encode fails the batch and writes none of it.
    let file = TempFile::new("unencodable.ndjson");
    let mut sink = NdjsonSink::create(file.path())?;
    let mut bad = std::collections::BTreeMap::new();
    bad.insert(vec![1u8], 1u8);
    let err = sink
        .write(vec![std::collections::BTreeMap::new(), bad])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Sink {
                operation: "write",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&file.path().display().to_string()),
        "{err}"
    );
    sink.flush().await?;
    assert_eq!(file.read(), "");

    // Same for csv (the `csv` crate cannot encode a tuple variant).
    #[derive(Serialize)]
    enum Cell {
        Fine(u8),
        Pair(u8, u8),
    }
    let csv = TempFile::new("unencodable.csv");
    let mut sink = CsvSink::create(csv.path())?;
    let err = sink
        .write(vec![(1u8, Cell::Fine(1)), (2u8, Cell::Pair(1, 2))])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Sink {
                operation: "write",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&csv.path().display().to_string()),
        "{err}"
    );
    sink.flush().await?;
    assert_eq!(csv.read(), "");
    Ok(())
}

#[tokio::test]
async fn appending_after_a_torn_last_line_cuts_it_off() -> Result<()> {
    // A crash left half a record at the end; it was after the last flush, so the
    // restart writes that record again: the fragment must go, not become a bad line.
    let file = TempFile::new("torn.ndjson");
    file.write("{\"id\":1,\"name\":\"a\",\"amount\":1}\n{\"id\":2,\"na");
    let mut sink = NdjsonSink::append(file.path())?;
    sink.write(vec![rec(2), rec(3)]).await?;
    sink.flush().await?;
    let (records, rejected, _) = drain(&mut NdjsonSource::<Rec>::open(file.path())?, 10).await;
    assert_eq!(
        records.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(rejected.is_empty(), "{rejected:?}");

    // A file with no newline at all holds no complete record.
    let bare = TempFile::new("torn-bare.ndjson");
    bare.write("{\"id\":9");
    let mut sink = NdjsonSink::append(bare.path())?;
    sink.write(vec![rec(4)]).await?;
    sink.flush().await?;
    let (records, rejected, _) = drain(&mut NdjsonSource::<Rec>::open(bare.path())?, 10).await;
    assert_eq!(records, vec![rec(4)]);
    assert!(rejected.is_empty(), "{rejected:?}");
    Ok(())
}

#[test]
fn every_public_type_is_debug() {
    let file = TempFile::new("debug.ndjson");
    file.write("id\n");
    let text = format!(
        "{:?} {:?} {:?} {:?} {:?}",
        NdjsonSource::<Rec>::open(file.path()).unwrap(),
        CsvSource::<Rec>::open(file.path()).unwrap(),
        NdjsonSink::<Rec>::append(file.path()).unwrap(),
        CsvSink::<Rec>::append(file.path()).unwrap(),
        FilePosition::default(),
    );
    assert!(
        text.contains("NdjsonSource") && text.contains("CsvSink"),
        "{text}"
    );
}

// ---------------------------------------------------------------- pipelines

fn write_orders(file: &TempFile) -> u64 {
    file.write(
        "{\"id\":1,\"name\":\"a\",\"amount\":1}\n\
         {\"id\":2,\"name\":\"b\",\"amount\":2}\n\
         {\"id\":3,\"name\":\"c\",\"amount\":\"three\"}\n\
         {\"id\":4,\"name\":\"d\",\"amount\":4}\n",
    );
    line_offsets(&file.read())[2]
}

#[tokio::test]
async fn pipeline_sends_bad_lines_to_an_ndjson_dead_letter_file() -> Result<()> {
    let input = TempFile::new("orders.ndjson");
    let bad_offset = write_orders(&input);
    let dlq = TempFile::new("orders.dlq.ndjson");

    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        "p",
        NdjsonSource::open(input.path())?,
        batchstream::transform::identity::<Rec>(),
        sink,
    )
    .with_dead_letter_sink(NdjsonSink::<DeadLetter>::create(dlq.path())?);
    let report = BatchExecutor::new().chunk_size(2).run(p).await?;
    assert_eq!(out.items(), vec![rec_like(1), rec_like(2), rec_like(4)]);
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(report.records_read, 4);

    // The DLQ is NDJSON: read it back with the source.
    let text = dlq.read();
    assert_eq!(text.lines().count(), 1, "{text}");
    let (letters, rejected, _) =
        drain(&mut NdjsonSource::<DeadLetter>::open(dlq.path())?, 10).await;
    assert!(rejected.is_empty());
    let letter = &letters[0];
    assert_eq!(letter.error.kind, RecordErrorKind::Parse);
    assert_eq!(letter.error.stage, "ndjson");
    assert_eq!(letter.error.location.file.as_deref(), Some(input.path()));
    assert_eq!(letter.error.location.line, Some(3));
    assert_eq!(letter.error.location.offset, Some(bad_offset));
    assert!(letter.raw.as_deref().unwrap().contains("three"));
    // The executor stamped the position of the batch that carried it.
    let position: FilePosition =
        serde_json::from_value(letter.position.clone().expect("a position")).unwrap();
    assert_eq!(position.line, 4);

    // `dead_letter_file` appends: a second run keeps the first run's letters.
    let (sink, _) = CollectSink::new();
    let p = Pipeline::new(
        "p",
        NdjsonSource::open(input.path())?,
        batchstream::transform::identity::<Rec>(),
        sink,
    )
    .with_dead_letter_sink(dead_letter_file(dlq.path())?);
    BatchExecutor::new().run(p).await?;
    assert_eq!(dlq.read().lines().count(), 2);
    Ok(())
}

fn rec_like(id: u32) -> Rec {
    Rec {
        id,
        name: ["a", "b", "c", "d"][id as usize - 1].to_string(),
        amount: i64::from(id),
    }
}

#[tokio::test]
async fn pipeline_without_a_dead_letter_sink_fails_naming_the_bad_line() -> Result<()> {
    let input = TempFile::new("orders-nodlq.ndjson");
    let bad_offset = write_orders(&input);
    let (sink, _) = CollectSink::new();
    let p = Pipeline::new(
        "p",
        NdjsonSource::open(input.path())?,
        batchstream::transform::identity::<Rec>(),
        sink,
    );
    let err = BatchExecutor::new().run(p).await.unwrap_err();
    let Error::Record(record) = &err else {
        panic!("expected Error::Record, got {err:?}");
    };
    assert_eq!(record.location.line, Some(3));
    assert_eq!(record.location.offset, Some(bad_offset));
    assert_eq!(record.location.file.as_deref(), Some(input.path()));
    let text = err.to_string();
    assert!(text.contains("line 3"), "{text}");
    assert!(text.contains(&input.path().display().to_string()), "{text}");
    Ok(())
}

#[tokio::test]
async fn csv_pipeline_with_dead_letters() -> Result<()> {
    let input = TempFile::new("orders.csv");
    input.write("id,name,amount\n1,a,1\n2,b,x\n3,c,3\n");
    let dlq = TempFile::new("orders-csv.dlq.ndjson");
    let (sink, out) = CollectSink::new();
    let p = Pipeline::new(
        "csv",
        CsvSource::open(input.path())?,
        batchstream::transform::identity::<Rec>(),
        sink,
    )
    .with_dead_letter_sink(dead_letter_file(dlq.path())?);
    BatchExecutor::new().run(p).await?;
    assert_eq!(
        out.items().iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![1, 3]
    );
    let letter: DeadLetter = serde_json::from_str(dlq.read().trim_end()).unwrap();
    assert_eq!(letter.error.stage, "csv");
    assert_eq!(letter.error.location.line, Some(3));
    assert_eq!(letter.raw.as_deref(), Some("2,b,x"));
    Ok(())
}
