//! Declaring a family: build it from static options and register it. The
//! definitions are static, so a failure is a programming error that every
//! test building a sidecar would catch, not something input can cause.

use prometheus::{
    Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub(super) fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    c: C,
) -> C {
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric registered twice: {e}"));
    c
}

fn malformed<T>(name: &str, e: prometheus::Error) -> T {
    panic!("metric {name} is malformed: {e}")
}

pub(super) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).unwrap_or_else(|e| malformed(name, e)),
    )
}

pub(super) fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        registry,
        IntGauge::new(name, help).unwrap_or_else(|e| malformed(name, e)),
    )
}

pub(super) fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    register(
        registry,
        Gauge::new(name, help).unwrap_or_else(|e| malformed(name, e)),
    )
}

pub(super) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| malformed(name, e)),
    )
}

pub(super) fn int_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| malformed(name, e)),
    )
}

pub(super) fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(
        registry,
        GaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| malformed(name, e)),
    )
}

pub(super) fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Histogram {
    register(
        registry,
        prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(name, help).buckets(buckets),
        )
        .unwrap_or_else(|e| malformed(name, e)),
    )
}

pub(super) fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> prometheus::HistogramVec {
    register(
        registry,
        prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(name, help).buckets(buckets),
            labels,
        )
        .unwrap_or_else(|e| malformed(name, e)),
    )
}
