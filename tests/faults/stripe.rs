//! A fake Stripe `POST /v1/invoices/{id}/pay` that counts: like Stripe, the first request
//! with an `Idempotency-Key` charges and every later one with the same key replays the
//! first answer. Chosen first-time calls answer slowly, so a scheduler can be killed
//! while the provider has charged and the scheduler has not committed.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

pub const TOKEN: &str = "sk_test_faults";

#[derive(Default)]
struct State {
    /// Requests per idempotency key (the first one charged).
    requests: HashMap<String, u32>,
    /// Idempotency keys per invoice: one key = one charge.
    keys: HashMap<String, HashSet<String>>,
    charges: usize,
}

#[derive(Clone)]
pub struct FakeStripe {
    state: Arc<Mutex<State>>,
    /// The n-th charges (1-based) that answer after `delay`.
    slow: Arc<HashSet<usize>>,
    delay: Duration,
    /// Slow charges whose request has arrived.
    pub slow_started: Arc<AtomicUsize>,
}

impl FakeStripe {
    pub fn new(slow: impl IntoIterator<Item = usize>, delay: Duration) -> Self {
        Self {
            state: Arc::default(),
            slow: Arc::new(slow.into_iter().collect()),
            delay,
            slow_started: Arc::default(),
        }
    }

    pub async fn serve(&self) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(matchers::method("POST"))
            .and(matchers::path_regex(r"^/v1/invoices/[A-Za-z0-9_]+/pay$"))
            .and(matchers::header(
                "authorization",
                format!("Bearer {TOKEN}").as_str(),
            ))
            .and(matchers::header_exists("idempotency-key"))
            .respond_with(self.clone())
            .mount(&server)
            .await;
        server
    }

    pub fn charges(&self) -> usize {
        self.state.lock().unwrap().charges
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.values().sum::<u32>() as usize
    }

    /// Keys requested more than once (re-sent after a crash), with their request counts.
    pub fn resent(&self) -> Vec<(String, u32)> {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }

    /// Charges (distinct keys) per invoice.
    pub fn charges_per_invoice(&self) -> HashMap<String, usize> {
        let state = self.state.lock().unwrap();
        state
            .keys
            .iter()
            .map(|(invoice, keys)| (invoice.clone(), keys.len()))
            .collect()
    }
}

impl Respond for FakeStripe {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let invoice = request
            .url
            .path()
            .split('/')
            .nth(3)
            .unwrap_or_default()
            .to_owned();
        let mut state = self.state.lock().unwrap();
        let count = state.requests.entry(key.clone()).or_insert(0);
        *count += 1;
        let first = *count == 1;
        state.keys.entry(invoice.clone()).or_default().insert(key);
        let mut slow = false;
        if first {
            state.charges += 1;
            slow = self.slow.contains(&state.charges);
        }
        drop(state);
        let body = serde_json::json!({ "id": invoice, "object": "invoice", "status": "paid" });
        let response = ResponseTemplate::new(200).set_body_json(body);
        if slow {
            self.slow_started.fetch_add(1, Ordering::SeqCst);
            response.set_delay(self.delay)
        } else {
            response
        }
    }
}
