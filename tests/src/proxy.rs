//! [`Proxy`]: a TCP proxy a test can cut or make refuse, standing for a failing network.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A TCP proxy on a free loopback port that a test can cut: every connection through it dropped at
/// once (a client's network failing), or new connections refused for a while (a server down).
pub struct Proxy {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    refusing: Arc<std::sync::atomic::AtomicBool>,
    /// Every n-th connection is refused (0: none).
    refuse_every: Arc<std::sync::atomic::AtomicUsize>,
    /// When each connection was let through.
    accepted: Arc<Mutex<Vec<tokio::time::Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refuse_every = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
        let (conns, refuse) = (connections.clone(), refusing.clone());
        let (every, let_through) = (refuse_every.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut arrived = 0usize;
            while let Ok((mut inbound, _)) = listener.accept().await {
                arrived += 1;
                let n = every.load(std::sync::atomic::Ordering::SeqCst);
                if refuse.load(std::sync::atomic::Ordering::SeqCst)
                    || (n > 0 && arrived.is_multiple_of(n))
                {
                    drop(inbound);
                    continue;
                }
                let_through
                    .lock()
                    .unwrap()
                    .push(tokio::time::Instant::now());
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut list = conns.lock().unwrap();
                list.retain(|h| !h.is_finished());
                list.push(handle);
            }
        });
        Proxy {
            addr,
            connections,
            refusing,
            refuse_every,
            accepted,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection through the proxy.
    pub fn cut(&self) {
        for handle in self.connections.lock().unwrap().drain(..) {
            handle.abort();
        }
    }

    /// While true, new connections are closed as soon as they are accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing
            .store(refusing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every `n`-th new connection at once (0: none), a flaky path refusing some connects.
    pub fn refuse_every(&self, n: usize) {
        self.refuse_every
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// When each connection so far was let through.
    pub fn accepted_at(&self) -> Vec<tokio::time::Instant> {
        self.accepted.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}
