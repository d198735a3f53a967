//! A stand-in for an API server's round trip, for the members that have none (the
//! simulated and process members): every request waits a fixed latency before it is
//! served, and the requests in flight are counted. With it the concurrent commit's
//! effect is measurable without Kubernetes (`cargo xtask bench member`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A fixed per-request latency and what it saw.
#[derive(Debug, Default)]
pub struct RequestLatency {
    latency: Duration,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    requests: AtomicU64,
}

/// What a [`RequestLatency`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    /// Requests served.
    pub total: u64,
    /// The most that were in flight at once.
    pub peak_in_flight: usize,
}

impl RequestLatency {
    /// Every request waits `latency` (zero: none, and nothing is awaited).
    pub fn new(latency: Duration) -> RequestLatency {
        RequestLatency {
            latency,
            ..RequestLatency::default()
        }
    }

    /// The latency.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// Serves one request: waits the latency, then runs `serve` (the backend's own
    /// work, under its lock).
    pub async fn request<T>(&self, serve: impl FnOnce() -> T) -> T {
        self.around(async { serve() }).await
    }

    /// Serves one request whose work is asynchronous: waits the latency, then runs
    /// `serve`; in flight until `serve` is done.
    pub async fn around<F: std::future::Future>(&self, serve: F) -> F::Output {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        // Out of flight however the request ends, dropped included.
        let _served = Served(&self.in_flight);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        serve.await
    }

    /// What it saw so far.
    pub fn requests(&self) -> Requests {
        Requests {
            total: self.requests.load(Ordering::Relaxed),
            peak_in_flight: self.peak.load(Ordering::Relaxed),
        }
    }
}

/// Takes a request out of flight when dropped.
struct Served<'a>(&'a AtomicUsize);

impl Drop for Served<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_wait_together_and_are_counted() {
        let latency = RequestLatency::new(Duration::from_millis(5));
        let start = tokio::time::Instant::now();
        let (a, b) = tokio::join!(latency.request(|| 1), latency.request(|| 2));
        assert_eq!((a, b), (1, 2));
        assert_eq!(start.elapsed(), Duration::from_millis(5), "concurrently");
        latency.request(|| ()).await;
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        assert_eq!(
            latency.requests(),
            Requests {
                total: 3,
                peak_in_flight: 2
            }
        );
    }
}
