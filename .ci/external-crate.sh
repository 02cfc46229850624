#!/usr/bin/env bash
# Builds a throw-away crate outside the repository that depends on batchstream by
# path, implements its own Source and Sink, and unit-tests a transform with a
# plain #[test].
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/src"
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "uses-batchstream"
version = "0.0.0"
edition = "2024"
publish = false

[lib]
doctest = false

[dependencies]
batchstream = { path = "$repo" }
tokio = { version = "1", features = ["rt", "macros"] }
TOML
cat > "$dir/src/lib.rs" <<'RS'
use batchstream::transform::Emit;
use batchstream::{Boundedness, Result, Sink, Source, SourceBatch, Transform};

pub struct Countdown(pub u32);

impl Source for Countdown {
    type Item = u32;
    type Position = u32;
    fn boundedness(&self) -> Boundedness { Boundedness::Bounded }
    async fn next_batch(&mut self, _max: usize) -> Result<Option<SourceBatch<u32, u32>>> {
        if self.0 == 0 { return Ok(None); }
        self.0 -= 1;
        Ok(Some(SourceBatch::new(vec![self.0], self.0)))
    }
}

#[derive(Default)]
pub struct Sum(pub u64);

impl Sink for Sum {
    type Item = u32;
    async fn write(&mut self, batch: Vec<u32>) -> Result<()> {
        self.0 += batch.iter().map(|x| u64::from(*x)).sum::<u64>();
        Ok(())
    }
}

pub struct Square;

impl Transform for Square {
    type In = u32;
    type Out = u32;
    fn process<E: Emit<u32>>(&mut self, x: u32, out: &mut E) { out.emit(x * x); }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchstream::testing::run_transform;

    #[test]
    fn square_is_tested_without_a_runtime() {
        assert_eq!(run_transform(Square, vec![2, 3]).records, vec![4, 9]);
    }

    #[tokio::test]
    async fn runs_under_the_batch_executor() {
        let p = batchstream::Pipeline::new("ext", Countdown(4), Square, Sum::default());
        let report = batchstream::BatchExecutor::new().run(p).await.unwrap();
        assert_eq!(report.records_written, 4);
    }
}
RS
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}/external-crate"
(cd "$dir" && cargo test)
