//! Source progress: the file sources report the bytes consumed out of the file's
//! current length.

mod support;
use support::TempFile;

use std::time::Duration;

use batchstream::adapters::file::{CsvSource, FilePosition, NdjsonSource};
use batchstream::{BoxSource, Result, Source, SourceProgress};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Rec {
    id: u32,
    name: String,
}

fn bytes(done: u64, total: u64) -> Option<SourceProgress> {
    Some(SourceProgress {
        done,
        total: Some(total),
        unit: "bytes",
    })
}

/// NDJSON lines with ids `100_000 + from..100_000 + to`, all of the same length.
fn ndjson_lines(from: u32, to: u32) -> String {
    (from..to)
        .map(|i| {
            let id = 100_000 + i;
            format!("{{\"id\":{id},\"name\":\"n{id}\"}}\n")
        })
        .collect()
}

/// Reads exactly `n` records (in batches of at most `n`), asserting none is rejected.
async fn read_records<S: Source>(source: &mut S, n: usize) -> Vec<S::Item> {
    let mut records = Vec::new();
    while records.len() < n {
        let batch = source
            .next_batch(n - records.len())
            .await
            .unwrap()
            .expect("a batch");
        assert!(batch.rejected.is_empty());
        records.extend(batch.records);
    }
    records
}

#[tokio::test]
async fn ndjson_progress_is_bytes_read_out_of_the_file_length() -> Result<()> {
    let file = TempFile::new("half.ndjson");
    let text = ndjson_lines(0, 100);
    file.write(&text);
    let len = file.len();
    assert_eq!(len % 100, 0, "lines of equal length");

    let mut source = NdjsonSource::<Rec>::open(file.path())?;
    assert_eq!(source.progress(), bytes(0, len));

    // Half the records: half the bytes.
    read_records(&mut source, 50).await;
    let progress = source.progress().unwrap();
    assert_eq!(
        progress,
        SourceProgress {
            done: len / 2,
            total: Some(len),
            unit: "bytes",
        }
    );
    assert_eq!(progress.remaining(), Some(len / 2));
    assert_eq!(progress.done, source.position().offset);

    // At the end, done == total, and it stays so.
    read_records(&mut source, 50).await;
    assert_eq!(source.progress(), bytes(len, len));
    assert!(source.next_batch(10).await?.is_none());
    assert_eq!(source.progress(), bytes(len, len));
    assert_eq!(source.progress().unwrap().remaining(), Some(0));
    Ok(())
}

#[tokio::test]
async fn progress_follows_the_position_not_the_bytes_read_ahead() -> Result<()> {
    // Lines of different lengths, blank lines, a bad line and no final newline.
    let file = TempFile::new("uneven.ndjson");
    let text = "{\"id\":1,\"name\":\"a\"}\n\n{\"id\":22,\"name\":\"a much longer name\"}\n\
                not json\n   \n{\"id\":3,\"name\":\"c\"}";
    file.write(text);
    let len = file.len();

    let mut source = NdjsonSource::<Rec>::open(file.path())?;
    let batch = source.next_batch(1).await?.unwrap();
    assert_eq!(batch.records.len(), 1);
    // The reader buffers the whole (small) file, but only the first line is consumed.
    let first = text.find('\n').unwrap() as u64 + 1;
    assert_eq!(source.progress(), bytes(first, len));

    let batch = source.next_batch(2).await?.unwrap();
    assert_eq!(batch.records.len() + batch.rejected.len(), 2);
    let offset = batch.position.offset;
    assert_eq!(offset, text.find("   \n").unwrap() as u64);
    assert_eq!(source.progress(), bytes(offset, len));

    // A bounded source reads a last line without its newline: done reaches total.
    let batch = source.next_batch(10).await?.unwrap();
    assert_eq!(batch.records.len(), 1);
    assert_eq!(source.progress(), bytes(len, len));
    Ok(())
}

#[tokio::test]
async fn csv_progress_counts_the_header() -> Result<()> {
    let file = TempFile::new("half.csv");
    let rows: String = (0..100)
        .map(|id| format!("{},n{id:05}\n", 1000 + id))
        .collect();
    file.write(format!("id,name\n{rows}"));
    let len = file.len();
    let header = "id,name\n".len() as u64;

    let source = CsvSource::<Rec>::open(file.path())?;
    // The header is read at open.
    assert_eq!(source.progress(), bytes(header, len));

    let mut source = source;
    read_records(&mut source, 50).await;
    let done = source.progress().unwrap().done;
    assert_eq!(done, header + (len - header) / 2);
    let fraction = done as f64 / len as f64;
    assert!((0.45..0.55).contains(&fraction), "{fraction}");

    read_records(&mut source, 50).await;
    assert!(source.next_batch(10).await?.is_none());
    assert_eq!(source.progress(), bytes(len, len));
    Ok(())
}

#[tokio::test]
async fn tailed_file_total_grows_as_lines_are_appended() -> Result<()> {
    let file = TempFile::new("tail.ndjson");
    file.write(ndjson_lines(0, 10));
    let len1 = file.len();

    let mut source = NdjsonSource::<Rec>::open(file.path())?.tail(Duration::from_millis(5));
    assert_eq!(source.progress(), bytes(0, len1));
    read_records(&mut source, 10).await;
    assert_eq!(source.progress(), bytes(len1, len1));

    // Appended lines grow the total before they are read.
    file.append(ndjson_lines(10, 30));
    let len2 = file.len();
    assert!(len2 > len1);
    assert_eq!(source.progress(), bytes(len1, len2));
    let records = read_records(&mut source, 20).await;
    assert_eq!(records.last().unwrap().id, 100_029);
    assert_eq!(source.progress(), bytes(len2, len2));

    // A partial last line counts in the total, not in what is done, until its newline
    // arrives and it is read.
    file.append("{\"id\":7,");
    let len3 = file.len();
    assert_eq!(source.progress(), bytes(len2, len3));
    let waiting = tokio::time::timeout(Duration::from_millis(30), source.next_batch(10)).await;
    assert!(waiting.is_err(), "the partial line is not read");
    assert_eq!(source.progress(), bytes(len2, len3));
    file.append("\"name\":\"g\"}\n");
    let len4 = file.len();
    assert_eq!(source.progress(), bytes(len2, len4));
    let records = read_records(&mut source, 1).await;
    assert_eq!(records[0].id, 7);
    assert_eq!(source.progress(), bytes(len4, len4));
    Ok(())
}

#[tokio::test]
async fn tailed_csv_total_grows_too() -> Result<()> {
    let file = TempFile::new("tail.csv");
    file.write("id,name\n1,a\n");
    let mut source = CsvSource::<Rec>::open(file.path())?.tail(Duration::from_millis(5));
    read_records(&mut source, 1).await;
    assert_eq!(source.progress(), bytes(file.len(), file.len()));
    let before = file.len();
    file.append("2,b\n3,c\n");
    assert_eq!(source.progress(), bytes(before, file.len()));
    read_records(&mut source, 2).await;
    assert_eq!(source.progress(), bytes(file.len(), file.len()));
    Ok(())
}

#[tokio::test]
async fn progress_after_seek_starts_at_the_position() -> Result<()> {
    let file = TempFile::new("seek.ndjson");
    let text = ndjson_lines(0, 10);
    file.write(&text);
    let len = file.len();
    let line = len / 10;

    let mut source = NdjsonSource::<Rec>::open(file.path())?;
    source
        .seek(FilePosition {
            offset: 4 * line,
            line: 4,
        })
        .await?;
    assert_eq!(source.progress(), bytes(4 * line, len));
    read_records(&mut source, 3).await;
    assert_eq!(source.progress(), bytes(7 * line, len));

    // A CSV source seeks past its header.
    let csv = TempFile::new("seek.csv");
    csv.write("id,name\n1,a\n2,b\n");
    let mut source = CsvSource::<Rec>::open(csv.path())?;
    source
        .seek(FilePosition {
            offset: 12,
            line: 2,
        })
        .await?;
    assert_eq!(source.progress(), bytes(12, 16));
    Ok(())
}

#[tokio::test]
async fn an_empty_file_is_done_at_once() -> Result<()> {
    let file = TempFile::new("empty.ndjson");
    file.write("");
    let mut source = NdjsonSource::<Rec>::open(file.path())?;
    assert_eq!(source.progress(), bytes(0, 0));
    assert!(source.next_batch(10).await?.is_none());
    assert_eq!(source.progress(), bytes(0, 0));
    Ok(())
}

#[tokio::test]
async fn a_file_that_shrank_reports_a_total_of_at_least_what_was_read() -> Result<()> {
    let file = TempFile::new("shrunk.ndjson");
    file.write(ndjson_lines(0, 10));
    let len = file.len();
    let mut source = NdjsonSource::<Rec>::open(file.path())?;
    read_records(&mut source, 5).await;
    file.write(""); // truncated in place
    assert_eq!(source.progress(), bytes(len / 2, len / 2));
    Ok(())
}

#[tokio::test]
async fn a_boxed_source_forwards_progress() -> Result<()> {
    let file = TempFile::new("boxed.ndjson");
    file.write(ndjson_lines(0, 4));
    let len = file.len();
    let mut source = BoxSource::new(NdjsonSource::<Rec>::open(file.path())?);
    assert_eq!(source.progress(), bytes(0, len));
    read_records(&mut source, 2).await;
    assert_eq!(source.progress(), bytes(len / 2, len));
    Ok(())
}
