//! A source over any iterator: vectors, ranges, generators.

use std::future::Future;

use crate::error::{Error, Result};
use crate::source::{Boundedness, Source, SourceBatch, SourceProgress};

/// A bounded source over an iterator. Its position is the number of records
/// consumed, so a fresh `IterSource` over the same data resumes by skipping.
///
/// ```
/// use batchstream::{Source, adapters::IterSource};
/// # futures::executor::block_on(async {
/// let mut s = IterSource::new(vec!["a", "b", "c"]);
/// s.seek(1).await.unwrap();
/// let b = s.next_batch(10).await.unwrap().unwrap();
/// assert_eq!(b.records, vec!["b", "c"]);
/// assert_eq!(b.position, 3);
/// assert!(s.next_batch(10).await.unwrap().is_none());
/// # });
/// ```
#[derive(Debug)]
pub struct IterSource<I> {
    iter: I,
    consumed: u64,
}

impl<I: Iterator> IterSource<I> {
    /// A source yielding the items of `iter`.
    pub fn new(iter: impl IntoIterator<IntoIter = I>) -> Self {
        IterSource {
            iter: iter.into_iter(),
            consumed: 0,
        }
    }
}

impl<I> Source for IterSource<I>
where
    I: Iterator + Send,
    I::Item: Send + 'static,
{
    type Item = I::Item;
    type Position = u64;

    fn boundedness(&self) -> Boundedness {
        Boundedness::Bounded
    }

    fn progress(&self) -> Option<SourceProgress> {
        let (_, upper) = self.iter.size_hint();
        Some(SourceProgress {
            done: self.consumed,
            total: upper.map(|rest| self.consumed + rest as u64),
            unit: "records",
        })
    }

    fn next_batch(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<SourceBatch<I::Item, u64>>>> + Send {
        let records: Vec<I::Item> = self.iter.by_ref().take(max).collect();
        self.consumed += records.len() as u64;
        let out = if records.is_empty() {
            None
        } else {
            Some(SourceBatch::new(records, self.consumed))
        };
        std::future::ready(Ok(out))
    }

    fn seek(&mut self, position: u64) -> impl Future<Output = Result<()>> + Send {
        let r = if position < self.consumed {
            Err(Error::source(format!(
                "iterator source cannot seek back to {position}: {} records already consumed",
                self.consumed
            )))
        } else {
            let skip = position - self.consumed;
            let skipped = self.iter.by_ref().take(skip as usize).count() as u64;
            self.consumed += skipped;
            if skipped < skip {
                Err(Error::source(format!(
                    "iterator source cannot seek to {position}: it has only {} records",
                    self.consumed
                )))
            } else {
                Ok(())
            }
        };
        std::future::ready(r)
    }
}

/// A bounded source over records shared behind an `Arc`: each batch is a copy of
/// the next chunk, so one data set can feed many runs (benchmarks, replays, tests)
/// without `'static` iterators. Its position is the index of the next record; it
/// seeks anywhere, backwards included.
///
/// ```
/// use std::sync::Arc;
/// use batchstream::{Source, adapters::SharedSource};
/// # futures::executor::block_on(async {
/// let data = Arc::new(vec![1, 2, 3]);
/// let mut s = SharedSource::new(&data);
/// assert_eq!(s.next_batch(2).await.unwrap().unwrap().records, vec![1, 2]);
/// s.seek(0).await.unwrap();
/// assert_eq!(s.next_batch(5).await.unwrap().unwrap().records, vec![1, 2, 3]);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct SharedSource<T> {
    data: std::sync::Arc<Vec<T>>,
    pos: usize,
}

impl<T> SharedSource<T> {
    /// A source reading `data` from the start.
    pub fn new(data: &std::sync::Arc<Vec<T>>) -> Self {
        SharedSource {
            data: std::sync::Arc::clone(data),
            pos: 0,
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Source for SharedSource<T> {
    type Item = T;
    type Position = u64;

    fn boundedness(&self) -> Boundedness {
        Boundedness::Bounded
    }

    fn progress(&self) -> Option<SourceProgress> {
        Some(SourceProgress {
            done: self.pos as u64,
            total: Some(self.data.len() as u64),
            unit: "records",
        })
    }

    fn next_batch(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<SourceBatch<T, u64>>>> + Send {
        let out = if self.pos >= self.data.len() {
            None
        } else {
            let end = self.data.len().min(self.pos.saturating_add(max));
            let records = self.data[self.pos..end].to_vec();
            self.pos = end;
            Some(SourceBatch::new(records, end as u64))
        };
        std::future::ready(Ok(out))
    }

    fn seek(&mut self, position: u64) -> impl Future<Output = Result<()>> + Send {
        let r = if position as usize > self.data.len() {
            Err(Error::source(format!(
                "cannot seek to {position}: the data has only {} records",
                self.data.len()
            )))
        } else {
            self.pos = position as usize;
            Ok(())
        };
        std::future::ready(r)
    }
}
