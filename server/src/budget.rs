//! One global memory budget for what strangers and scanners can make the server hold: handshakes
//! in progress, open connections and request bodies being read or waiting for their verdicts.
//!
//! Every charge is taken before the memory is allocated and released when it is freed (a
//! [`Charge`] is dropped); a charge that does not fit is refused, and the caller refuses the work
//! (a connection, a request) instead of growing. The costs of a handshake and of a connection are
//! estimates of quinn's state for them (the bytes a request body takes are exact), chosen on the
//! high side so the budget errs towards refusing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// Charged per handshake in progress: quinn's connection state, the TLS state and the server's
/// first flight (a half-open connection was measured at about 85 KiB of RSS).
pub(crate) const HANDSHAKE_COST: usize = 96 * 1024;
/// Charged per established connection, on top of its request bodies: quinn's state for an idle
/// connection and ours.
pub(crate) const CONNECTION_COST: usize = 8 * 1024;

/// The budget: a byte count that never passes its total.
pub(crate) struct Budget {
    total: usize,
    used: AtomicUsize,
    /// `used`, as the gauge `/metrics` shows.
    gauge: Gauge<u64, AtomicU64>,
}

impl Budget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Arc<Budget> {
        Arc::new(Budget {
            total,
            used: AtomicUsize::new(0),
            gauge: Gauge::default(),
        })
    }

    /// Registers the budget and the bytes in use.
    pub fn register_metrics(&self, scrape: &mut Registry) {
        scrape.register(
            "gatehouse_memory_budget_used_bytes",
            "Bytes of the memory budget held by handshakes, connections and request bodies",
            self.gauge.clone(),
        );
        scrape.register(
            "gatehouse_memory_budget_bytes",
            "The memory budget",
            ConstGauge::new(self.total as u64),
        );
    }

    /// Takes `bytes` if they fit; `None` (nothing taken) if they do not.
    pub fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let after = used.checked_add(bytes).filter(|a| *a <= self.total)?;
            match self
                .used
                .compare_exchange_weak(used, after, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.gauge.set(after as u64);
                    return Some(Charge {
                        budget: Arc::clone(self),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    /// Bytes in use.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Bytes taken from the budget, given back when dropped.
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let before = self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget
            .gauge
            .set(before.saturating_sub(self.bytes) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_never_pass_the_total_and_come_back_when_dropped() {
        let b = Budget::new(100);
        let a = b.try_take(60);
        assert!(a.is_some());
        assert!(b.try_take(41).is_none(), "over the total");
        let c = b.try_take(40);
        assert!(c.is_some());
        assert_eq!(b.used(), 100);
        assert!(b.try_take(1).is_none());
        assert!(b.try_take(usize::MAX).is_none(), "no overflow");
        drop(a);
        assert_eq!(b.used(), 40);
        assert!(b.try_take(60).is_some());
        drop(c);
        assert_eq!(b.used(), 0);
    }
}
