//! A TCP link between a subsync process and RabbitMQ that a scenario can break:
//!
//! - `cut`: every connection is dropped at once and new ones are refused until `restore`
//!   (the network to the broker is gone);
//! - `freeze`: on the connections open now, bytes from the process to the broker are read
//!   and dropped from then on, while the broker's bytes still flow to the process (new
//!   connections are not affected). A worker then still receives its deliveries and
//!   commits them, but its acks never reach the broker: killed in that state, it died
//!   "between commit and ack".

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

pub struct Link {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Mutex<CancellationToken>>,
    frozen: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Link {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let frozen = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (u, c, f, s) = (up.clone(), cut.clone(), frozen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((inbound, _)) = accepted else { continue };
                if !u.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let cut = c.lock().unwrap().clone();
                let frozen = f.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = pipe(inbound, outbound, frozen) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cut,
            frozen,
            stop,
        }
    }

    /// The AMQP URL of the broker through this link.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut token = self.cut.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Drops everything the processes connected now send to the broker from now on
    /// (their acks); connections made later are not affected.
    pub fn freeze(&self) {
        let mut token = self.frozen.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn pipe(inbound: TcpStream, outbound: TcpStream, frozen: CancellationToken) {
    let (mut from_client, mut to_client) = inbound.into_split();
    let (mut from_broker, mut to_broker) = outbound.into_split();
    let down = tokio::io::copy(&mut from_broker, &mut to_client);
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => return, // the process closed or died
                Ok(n) => n,
            };
            if frozen.is_cancelled() {
                continue;
            }
            if to_broker.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}
