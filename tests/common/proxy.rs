//! A TCP proxy on loopback that can freeze: while frozen, no byte passes in either
//! direction and connections stay open (a network partition, as a client sees it). It
//! can also cut the connections open now for good, leaving them open and silent (even
//! when one end closes), while new connections pass: a path that died without a word.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    frozen: Arc<watch::Sender<bool>>,
    /// Connections numbered below this are cut.
    cut_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards connections on a free port to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(watch::channel(false).0);
        let cut_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let (f, c, n) = (frozen.clone(), cut_below.clone(), next.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = n.fetch_add(1, Ordering::SeqCst);
                let (f, c) = (f.clone(), c.clone());
                tokio::spawn(async move {
                    wait_thawed(&f).await;
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let link = Link {
                        frozen: &f,
                        cut_below: &c,
                        id,
                    };
                    tokio::join!(pipe(cr, sw, &link), pipe(sr, cw, &link));
                });
            }
        });
        Proxy {
            addr,
            frozen,
            cut_below,
            next,
            task,
        }
    }

    /// The connections open now pass nothing more, ever, and stay open.
    pub fn cut(&self) {
        self.cut_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_thawed(frozen: &watch::Sender<bool>) {
    let mut rx = frozen.subscribe();
    let _ = rx.wait_for(|f| !*f).await;
}

/// What one proxied connection looks at.
struct Link<'a> {
    frozen: &'a watch::Sender<bool>,
    cut_below: &'a AtomicU64,
    id: u64,
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: &Link<'_>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        wait_thawed(link.frozen).await;
        let read = from.read(&mut buf).await;
        // Bytes read just as the proxy froze wait for the thaw.
        wait_thawed(link.frozen).await;
        if link.id < link.cut_below.load(Ordering::SeqCst) {
            // Cut: nothing passes, not even a close, and both halves stay open.
            std::future::pending::<()>().await;
        }
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
