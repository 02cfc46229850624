//! What a user crate does: implement its own `Source`, `Sink` and `Transform`
//! against the public API only, unit-test the transform with a plain `#[test]`,
//! and run the pipeline under every executor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use batchstream::testing::{assert_modes_agree, run_transform};
use batchstream::transform::{Emit, TransformExt, VecEmitter};
use batchstream::{
    Boundedness, DeliveryGuarantee, Pipeline, Result, Sink, Source, SourceBatch, StreamExecutor,
    Transform,
};
use serde::{Deserialize, Serialize};

/// A paginated "API" source: pages of readings, resumable by page number.
struct PagedApi {
    pages: Vec<Vec<Reading>>,
    next_page: usize,
}

#[derive(Debug, Clone, PartialEq, PartialOrd, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    celsius: f64,
}

impl Source for PagedApi {
    type Item = Reading;
    type Position = usize;

    fn boundedness(&self) -> Boundedness {
        Boundedness::Bounded
    }

    async fn next_batch(&mut self, _max: usize) -> Result<Option<SourceBatch<Reading, usize>>> {
        let Some(page) = self.pages.get(self.next_page) else {
            return Ok(None);
        };
        self.next_page += 1;
        Ok(Some(SourceBatch::new(page.clone(), self.next_page)))
    }

    async fn seek(&mut self, page: usize) -> Result<()> {
        self.next_page = page;
        Ok(())
    }
}

/// A keyed store sink: last alert per sensor (an upsert, hence idempotent).
#[derive(Clone, Default)]
struct AlertStore(Arc<Mutex<HashMap<String, f64>>>);

impl Sink for AlertStore {
    type Item = Alert;
    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Idempotent
    }
    async fn write(&mut self, batch: Vec<Alert>) -> Result<()> {
        let mut m = self.0.lock().unwrap();
        for a in batch {
            m.insert(a.sensor, a.fahrenheit);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Alert {
    sensor: String,
    fahrenheit: f64,
}

impl Eq for Alert {}
impl PartialOrd for Alert {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Alert {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.sensor, self.fahrenheit.to_bits()).cmp(&(&other.sensor, other.fahrenheit.to_bits()))
    }
}

/// The user's logic: convert to Fahrenheit and alert above a threshold.
struct HeatAlert {
    threshold_f: f64,
}

impl Transform for HeatAlert {
    type In = Reading;
    type Out = Alert;
    fn process<E: Emit<Alert>>(&mut self, r: Reading, out: &mut E) {
        let f = r.celsius * 9.0 / 5.0 + 32.0;
        if f > self.threshold_f {
            out.emit(Alert {
                sensor: r.sensor,
                fahrenheit: f,
            });
        }
    }
}

fn reading(sensor: &str, celsius: f64) -> Reading {
    Reading {
        sensor: sensor.into(),
        celsius,
    }
}

// A plain #[test]: no runtime, no executor.
#[test]
fn heat_alert_converts_and_filters() {
    let out = run_transform(
        HeatAlert { threshold_f: 100.0 },
        vec![reading("a", 20.0), reading("b", 40.0)],
    );
    assert_eq!(
        out.records,
        vec![Alert {
            sensor: "b".into(),
            fahrenheit: 104.0
        }]
    );

    // Or drive `process` directly with a `VecEmitter`.
    let mut t = HeatAlert { threshold_f: 0.0 };
    let mut em = VecEmitter::new();
    t.process(reading("c", 0.0), &mut em);
    assert_eq!(em.records[0].fahrenheit, 32.0);
}

#[test]
fn user_transform_composes_with_combinators() {
    let t = HeatAlert { threshold_f: 100.0 }.map(|a| a.sensor);
    let out = run_transform(t, vec![reading("x", 50.0), reading("y", 10.0)]);
    assert_eq!(out.records, vec!["x".to_string()]);
}

fn pages() -> Vec<Vec<Reading>> {
    vec![
        vec![reading("a", 45.0), reading("b", 10.0)],
        vec![],
        vec![reading("b", 39.0), reading("c", 50.0), reading("a", 41.0)],
    ]
}

#[tokio::test]
async fn custom_source_and_sink_run_under_an_executor() {
    let store = AlertStore::default();
    let p = Pipeline::new(
        "heat",
        PagedApi {
            pages: pages(),
            next_page: 0,
        },
        HeatAlert { threshold_f: 100.0 },
        store.clone(),
    );
    let report = StreamExecutor::new().run(p).await.unwrap();
    assert_eq!(report.records_read, 5);
    let m = store.0.lock().unwrap().clone();
    assert_eq!(m.len(), 3);
    assert!(
        (m["a"] - 105.8).abs() < 1e-9,
        "last alert for a wins: {m:?}"
    );
}

#[tokio::test]
async fn custom_source_gives_the_same_alerts_under_all_executors() {
    let alerts = assert_modes_agree(|sink| {
        Pipeline::new(
            "heat",
            PagedApi {
                pages: pages(),
                next_page: 0,
            },
            HeatAlert { threshold_f: 100.0 },
            sink,
        )
    })
    .await;
    assert_eq!(alerts.len(), 4);
}
