//! Any file content read by the NDJSON and CSV sources gives records or dead letters
//! that name their line and byte offset: never a panic, never a lost line.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

use batchstream::Source;
use batchstream::adapters::file::{CsvSource, NdjsonSource};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Rec {
    id: u64,
    name: String,
    amount: f64,
}

/// Records and dead letters read, or the typed error that stopped the source (a CSV
/// header that does not decode stops it: without a header no row can be read).
async fn drain<S: Source>(mut s: S) -> Result<(usize, usize), batchstream::Error> {
    let (mut ok, mut bad) = (0, 0);
    while let Some(b) = s.next_batch(7).await? {
        ok += b.records.len();
        for d in &b.rejected {
            assert!(d.error.location.line.is_some() && d.error.location.offset.is_some());
        }
        bad += b.rejected.len();
    }
    Ok((ok, bad))
}

fuzz_target!(|data: &[u8]| {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "bs-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, data).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let lines = data
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .count();
        let (ok, bad) = drain(NdjsonSource::<Rec>::open(&path).unwrap())
            .await
            .expect("an NDJSON file never stops the source: bad lines are dead letters");
        assert_eq!(
            ok + bad,
            lines,
            "every non-blank line is a record or a dead letter"
        );
        let csv = match CsvSource::<Rec>::open(&path) {
            Ok(source) => drain(source).await,
            Err(e) => Err(e),
        };
        if let Err(e) = csv {
            let name = path.display().to_string();
            assert!(
                e.to_string().contains(&name),
                "the error names the file: {e}"
            );
        }
    });
    std::fs::remove_file(&path).ok();
});
