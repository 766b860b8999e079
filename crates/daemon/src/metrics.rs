//! Prometheus metrics: requests and latency per command and result, errors by CNI
//! code, attachments per network, requests in flight, cache sizes and sync state.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Command and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Endpoint (`/cni`, `/delegate`).
    pub handler: String,
    /// CNI command.
    pub command: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Command and CNI error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// CNI command.
    pub command: String,
    /// CNI error code.
    pub code: String,
}

/// A network.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkLabels {
    /// Status name of the network (`ns/nad` or the CNI name).
    pub network: String,
}

/// A hot-plug outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HotplugLabels {
    /// `changed`, `rejected`, `failed_adding` or `failed_removing`.
    pub result: String,
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    /// Requests handled.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency in seconds.
    pub latency: HistogramFamily,
    /// Errors by code.
    pub errors: Family<ErrorLabels, Counter>,
    /// Attachments made per network.
    pub attachments: Family<NetworkLabels, Counter>,
    /// Requests being served.
    pub in_flight: Gauge,
    /// Pods in the cache.
    pub cached_pods: Gauge,
    /// NADs in the cache.
    pub cached_nads: Gauge,
    /// 1 once both caches have listed.
    pub caches_synced: Gauge,
    /// Hot-plug reconciles that did something, by outcome.
    pub hotplug: Family<HotplugLabels, Counter>,
    /// Time from a selection annotation's change reaching the daemon to the pod's
    /// interfaces matching it.
    pub hotplug_latency: Histogram,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("plexus");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let errors = Family::<ErrorLabels, Counter>::default();
        let attachments = Family::<NetworkLabels, Counter>::default();
        let (in_flight, cached_pods, cached_nads, caches_synced) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register("requests", "CNI requests handled", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time to handle a CNI request",
            latency.clone(),
        );
        registry.register("errors", "CNI errors returned, by code", errors.clone());
        registry.register(
            "attachments",
            "Attachments added, by network",
            attachments.clone(),
        );
        registry.register(
            "requests_in_flight",
            "CNI requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "cached_pods",
            "Pods of this node in the cache",
            cached_pods.clone(),
        );
        registry.register(
            "cached_nads",
            "NetworkAttachmentDefinitions in the cache",
            cached_nads.clone(),
        );
        registry.register(
            "caches_synced",
            "1 when the pod and NAD caches have listed",
            caches_synced.clone(),
        );
        let hotplug = Family::<HotplugLabels, Counter>::default();
        let hotplug_latency = latency_histogram();
        registry.register(
            "hotplug",
            "Hot-plug reconciles that attached, detached or failed, by result",
            hotplug.clone(),
        );
        registry.register(
            "hotplug_duration_seconds",
            "Time from a selection annotation change seen by the daemon to the interfaces matching it",
            hotplug_latency.clone(),
        );
        Metrics {
            hotplug,
            hotplug_latency,
            registry,
            requests,
            latency,
            errors,
            attachments,
            in_flight,
            cached_pods,
            cached_nads,
            caches_synced,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
