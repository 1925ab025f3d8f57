//! A TCP fault proxy: forward, refuse, stall, and cut, on command.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass bytes both ways to the target.
    Forward,
    /// Accept, then reset the connection at once (as if nothing listened).
    Refuse,
    /// Accept new connections and hold them without passing a byte, and stop passing bytes on
    /// open ones (a hung dependency). Leaving this mode closes the stalled connections.
    Stall,
}

/// A TCP proxy in front of a real server, so a test can take the server away and bring it back
/// mid-test. Dropping the proxy stops it and closes every connection.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use keel_testing::{FaultProxy, Mode};
/// let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap(), Mode::Refuse).await?;
/// // point the service at proxy.addr(), check readiness is down, then:
/// proxy.set_mode(Mode::Forward);
/// // … later, a mid-run outage:
/// proxy.take_down();
/// # Ok(()) }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy").field("addr", &self.addr).field("mode", &*self.mode.borrow()).finish()
    }
}

impl FaultProxy {
    /// Listens on an ephemeral port of 127.0.0.1 in front of `target`.
    pub async fn start(target: SocketAddr, mode: Mode) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(mode);
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let conns = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mode = *rx.borrow();
                let handle = match mode {
                    Mode::Refuse => {
                        refuse(client);
                        continue;
                    }
                    Mode::Stall => {
                        let mut rx = rx.clone();
                        tokio::spawn(async move {
                            // Hold the socket until the mode changes or the proxy is cut.
                            let _client = client;
                            let _ = rx.changed().await;
                        })
                    }
                    Mode::Forward => {
                        let mut rx = rx.clone();
                        tokio::spawn(async move {
                            let Ok(mut upstream) = TcpStream::connect(target).await else {
                                refuse(client);
                                return;
                            };
                            let mut client = client;
                            let stalled = tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => false,
                                _ = rx.wait_for(|m| *m == Mode::Stall) => true,
                            };
                            if stalled {
                                // Keep both sockets open and silent until the stall ends or a cut.
                                let _ = rx.wait_for(|m| *m != Mode::Stall).await;
                            }
                        })
                    }
                };
                if let Ok(mut c) = conns.lock() {
                    c.retain(|h| !h.is_finished());
                    c.push(handle.abort_handle());
                }
            }
        });
        Ok(Self { addr, mode: tx, connections, accept })
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port` of [`FaultProxy::addr`].
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Changes what happens to new connections (existing ones are left alone; see [`FaultProxy::cut`]).
    pub fn set_mode(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }

    /// Closes every open connection now.
    pub fn cut(&self) {
        if let Ok(mut c) = self.connections.lock() {
            for h in c.drain(..) {
                h.abort();
            }
        }
    }

    /// An outage: refuse new connections and cut the open ones.
    pub fn take_down(&self) {
        self.set_mode(Mode::Refuse);
        self.cut();
    }

    /// Back to normal.
    pub fn restore(&self) {
        self.set_mode(Mode::Forward);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

fn refuse(stream: TcpStream) {
    // Zero linger: closing sends RST, so the client sees "connection reset", as with a dead port.
    if let Ok(std) = stream.into_std() {
        let sock = socket2::SockRef::from(&std);
        let _ = sock.set_linger(Some(std::time::Duration::ZERO));
    }
}
