//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test crate uses a different part

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A unique temp file, removed on drop.
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "batchstream-test-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        TempFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, text: impl AsRef<[u8]>) {
        std::fs::write(&self.0, text).unwrap();
    }

    pub fn append(&self, text: impl AsRef<[u8]>) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.0)
            .unwrap();
        f.write_all(text.as_ref()).unwrap();
    }

    pub fn read(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap()
    }

    pub fn len(&self) -> u64 {
        std::fs::metadata(&self.0).unwrap().len()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Resolves once `table` holds `n` keys, or after `limit` (the test's assertions then
/// fail with what the table does hold). Used as the shutdown future of stream runs.
pub async fn rows_filled<K: Ord + Clone, V: Clone>(
    table: batchstream::adapters::UpsertTable<K, V>,
    n: usize,
    limit: std::time::Duration,
) {
    let _ = tokio::time::timeout(limit, async {
        while table.snapshot().len() < n {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The Lambda tests' pipelines: page views counted per (page, day).
pub mod lambda {
    use batchstream::checkpoint::CheckpointStore;
    use batchstream::lambda::BatchSink;
    use batchstream::transform::{self, TransformExt};
    use batchstream::{Pipeline, Source, Transform};

    /// A page view: (page, day).
    pub type View = (&'static str, &'static str);

    /// Day 1's views: home 3, cart 2, faq 1.
    pub fn day1() -> Vec<View> {
        vec![
            ("home", "d1"),
            ("cart", "d1"),
            ("home", "d1"),
            ("home", "d1"),
            ("cart", "d1"),
            ("faq", "d1"),
        ]
    }

    /// The speed layer's logic: one increment per view.
    pub fn speed_logic() -> impl Transform<In = View, Out = (String, String, u64)> {
        transform::identity::<View>().map(|v: View| (v.0.to_string(), v.1.to_string(), 1u64))
    }

    /// The batch layer's pipeline: exact views per page for one day.
    pub fn batch_pipeline<S: Source<Item = View>, C: CheckpointStore + 'static>(
        source: S,
        sink: BatchSink<String, String, u64>,
        store: C,
    ) -> Pipeline<S, impl Transform<In = View, Out = (String, u64)>, BatchSink<String, String, u64>>
    {
        let logic = transform::identity::<View>()
            .key_by(|v: &View| v.0.to_string())
            .fold(0u64, |n: &mut u64, _: View| *n += 1);
        Pipeline::new("views-batch", source, logic, sink).with_checkpoint_store(store)
    }
}
