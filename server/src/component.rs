//! The one seam between the parts of the server that own state and the operations endpoint:
//! each part (admission, the queue, the store, the feed, the reloader) says at each scrape what
//! it holds and whether it lets the node answer. `Metrics` only reads them.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A part of the server that owns its state: at each scrape it registers what it holds (as
/// metrics, read now). `Metrics` only reads it.
pub(crate) trait Component: Send + Sync {
    /// Registers this component's metrics, read at `now` (Unix seconds), into `scrape`.
    fn register_metrics(&self, scrape: &mut Registry, now: u64);

    /// Why the node cannot accept tokens because of this component, if it cannot: one part of
    /// `/readyz`, which is composed from every component's answer.
    fn not_ready(&self, _now: u64) -> Option<&'static str> {
        None
    }

    /// The same for what is this node's own (not shared with the fleet, such as a store or a
    /// feed): `/readyz/local`, what keeps a Kubernetes pod in its Service.
    fn not_ready_local(&self, _now: u64) -> Option<&'static str> {
        None
    }
}

/// A histogram known only by its sum and count (the store keeps no buckets): its one bucket is
/// +Inf, so `_sum` and `_count` are exported as they were when it was typed a summary.
#[derive(Debug)]
pub(crate) struct Totals {
    /// The sum of the observations.
    pub sum: f64,
    /// How many there were.
    pub count: u64,
}

impl TypedMetric for Totals {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Totals {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &[], None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Values read at scrape time, one per label set, encoded in the order given (a `Family` would
/// hash them into a map on every scrape and write them in no fixed order).
#[derive(Debug)]
pub(crate) struct Rows<L, M>(pub Vec<(L, M)>);

impl<L: EncodeLabelSet, M: EncodeMetric + TypedMetric> EncodeMetric for Rows<L, M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.0 {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
