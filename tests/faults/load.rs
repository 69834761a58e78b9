//! The load: signed Stripe invoice webhooks posted concurrently (optionally paced), each
//! answer recorded by event id; connection errors and timeouts count as "not 2xx".

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use subsync::providers::Source;
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};

use crate::harness::{AMOUNT, Env};

/// One webhook to send.
pub struct Webhook {
    pub id: String,
    pub body: Vec<u8>,
}

pub type Maker = Arc<dyn Fn(usize) -> Webhook + Send + Sync>;

/// A Stripe invoice event: `invoice.payment_failed` (attempt 1, a soft decline) or
/// `invoice.paid` (attempt 2, [`AMOUNT`] collected).
pub fn invoice_event(
    id: &str,
    paid: bool,
    invoice: &str,
    subscription: &str,
    currency: &str,
    created: i64,
) -> Vec<u8> {
    let error = (!paid).then(
        || serde_json::json!({ "code": "card_declined", "decline_code": "insufficient_funds" }),
    );
    serde_json::to_vec(&serde_json::json!({
        "id": id, "object": "event", "created": created,
        "type": if paid { "invoice.paid" } else { "invoice.payment_failed" },
        "data": { "object": {
            "id": invoice, "object": "invoice", "customer": format!("cus_{subscription}"),
            "subscription": subscription, "amount_due": AMOUNT,
            "amount_paid": if paid { AMOUNT } else { 0 }, "currency": currency,
            "attempt_count": if paid { 2 } else { 1 }, "status": if paid { "paid" } else { "open" },
            "payment_intent": { "id": format!("pi_{invoice}"), "last_payment_error": error },
        } }
    }))
    .unwrap()
}

/// Webhook `n` of a scenario: invoice `n / 2` fails (`_f`) then is paid (`_p`). The same
/// `n` always gives the same bytes (a redelivery is the same webhook).
pub fn invoices(tag: &'static str) -> Maker {
    let created = chrono::Utc::now().timestamp();
    Arc::new(move |n| {
        let invoice = format!("in_{tag}_{}", n / 2);
        let paid = n % 2 == 1;
        let id = format!("evt_{tag}_{}_{}", n / 2, if paid { "p" } else { "f" });
        let subscription = format!("sub_{tag}_{}", (n / 2) % 500);
        Webhook {
            body: invoice_event(&id, paid, &invoice, &subscription, "usd", created),
            id,
        }
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// Connection refused or reset, timeout: no HTTP answer at all.
    Error,
}

impl Answer {
    pub fn ok(&self) -> bool {
        matches!(self, Answer::Status(s) if (200..300).contains(s))
    }
}

pub struct Entry {
    pub id: String,
    pub index: usize,
    pub answer: Answer,
}

pub struct Report {
    pub entries: Vec<Entry>,
    pub elapsed: Duration,
}

impl Report {
    pub fn sent(&self) -> usize {
        self.entries.len()
    }

    pub fn ids(&self) -> HashSet<String> {
        self.entries.iter().map(|e| e.id.clone()).collect()
    }

    /// Ids that got a 2xx.
    pub fn accepted(&self) -> HashSet<String> {
        self.entries
            .iter()
            .filter(|e| e.answer.ok())
            .map(|e| e.id.clone())
            .collect()
    }

    pub fn count(&self, f: impl Fn(&Answer) -> bool) -> usize {
        self.entries.iter().filter(|e| f(&e.answer)).count()
    }

    /// Answers that are neither 2xx, 503 nor a connection error, by status.
    pub fn unexpected(&self) -> BTreeMap<u16, usize> {
        let mut out = BTreeMap::new();
        for e in &self.entries {
            if let Answer::Status(s) = e.answer
                && !(200..300).contains(&s)
                && s != 503
            {
                *out.entry(s).or_insert(0) += 1;
            }
        }
        out
    }

    pub fn summary(&self) -> String {
        format!(
            "sent {} in {:.1}s: 2xx {}, 503 {}, connection errors {}, other {:?}",
            self.sent(),
            self.elapsed.as_secs_f64(),
            self.count(Answer::ok),
            self.count(|a| *a == Answer::Status(503)),
            self.count(|a| *a == Answer::Error),
            self.unexpected()
        )
    }
}

/// How to send.
#[derive(Clone)]
pub struct Load {
    pub url: String,
    pub source: Arc<Source>,
    pub make: Maker,
    pub count: usize,
    /// Requests started per second; None = as fast as `concurrency` allows.
    pub rate: Option<f64>,
    pub concurrency: usize,
    /// When set, keeps sending past `count` until it turns true (a fault is over), and
    /// then `tail` more, so the load always spans the fault and its recovery.
    pub until: Option<watch::Receiver<bool>>,
    pub tail: usize,
    client: reqwest::Client,
}

impl Load {
    pub fn new(env: &Env, url: String, source_id: &str, make: Maker, count: usize) -> Self {
        let source = crate::common::source(env.settings.source(source_id).unwrap()).unwrap();
        Self {
            url: format!("{url}/webhooks/{source_id}"),
            source: Arc::new(source),
            make,
            count,
            rate: None,
            concurrency: 48,
            until: None,
            tail: 0,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
        }
    }

    pub fn rate(mut self, per_second: f64) -> Self {
        self.rate = Some(per_second);
        self
    }

    pub fn spanning(mut self, fault_over: watch::Receiver<bool>, tail: usize) -> Self {
        self.until = Some(fault_over);
        self.tail = tail;
        self
    }

    async fn post(&self, webhook: Webhook) -> Answer {
        let headers = self
            .source
            .sign(&webhook.id, &webhook.body, SystemTime::now());
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        match request.body(webhook.body).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                Answer::Status(status)
            }
            Err(_) => Answer::Error,
        }
    }

    /// Sends the load; `progress` counts answered requests (faults trigger on it).
    pub async fn run(&self, progress: Arc<AtomicUsize>) -> Report {
        let started = Instant::now();
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = JoinSet::new();
        let mut entries = Vec::with_capacity(self.count + self.tail);
        let mut tail_left: Option<usize> = None;
        let mut n = 0;
        loop {
            if n >= self.count {
                match &self.until {
                    None => break,
                    Some(over) if *over.borrow() => {
                        let left = tail_left.get_or_insert(self.tail);
                        if *left == 0 {
                            break;
                        }
                        *left -= 1;
                    }
                    Some(_) => {}
                }
            }
            if let Some(rate) = self.rate {
                let at = started + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
            }
            let permit = permits.clone().acquire_owned().await.unwrap();
            let webhook = (self.make)(n);
            let (this, progress) = (self.clone(), progress.clone());
            tasks.spawn(async move {
                let id = webhook.id.clone();
                let answer = this.post(webhook).await;
                drop(permit);
                progress.fetch_add(1, Ordering::SeqCst);
                Entry {
                    id,
                    index: n,
                    answer,
                }
            });
            n += 1;
            while let Some(done) = tasks.try_join_next() {
                entries.push(done.unwrap());
            }
        }
        while let Some(done) = tasks.join_next().await {
            entries.push(done.unwrap());
        }
        entries.sort_by_key(|e| e.index);
        Report {
            entries,
            elapsed: started.elapsed(),
        }
    }

    /// The provider redelivers: every webhook of `report` that did not get a 2xx is sent
    /// again (fresh signature, same body) until it does, at most `rounds` times. Returns
    /// how many requests that took and which ids never got a 2xx.
    pub async fn redeliver(&self, report: &Report, rounds: usize) -> (usize, Vec<String>) {
        let mut pending: Vec<usize> = report
            .entries
            .iter()
            .filter(|e| !e.answer.ok())
            .map(|e| e.index)
            .collect();
        let mut sent = 0;
        for round in 0..rounds {
            if pending.is_empty() {
                break;
            }
            if round > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let permits = Arc::new(Semaphore::new(self.concurrency));
            let mut tasks = JoinSet::new();
            for &n in &pending {
                let permit = permits.clone().acquire_owned().await.unwrap();
                let this = self.clone();
                tasks.spawn(async move {
                    let answer = this.post((this.make)(n)).await;
                    drop(permit);
                    (n, answer)
                });
            }
            sent += pending.len();
            let mut still = Vec::new();
            while let Some(done) = tasks.join_next().await {
                let (n, answer) = done.unwrap();
                if !answer.ok() {
                    still.push(n);
                }
            }
            pending = still;
        }
        let failing = pending.into_iter().map(|n| (self.make)(n).id).collect();
        (sent, failing)
    }
}
