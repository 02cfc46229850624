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
