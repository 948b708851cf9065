//! A TCP proxy a test can cut and restore: a network partition between two processes.

use std::net::TcpListener;

use crate::loopback::loopback_addr;

/// A TCP proxy on a loopback port that a test can cut (every connection closed, new ones
/// refused) and restore: a network partition between one process and another.
pub struct Proxy {
    /// Where clients connect.
    pub address: String,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Both ends of every forwarded connection, to shut down on a cut.
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// Forwards connections to `target` until dropped.
    pub fn start(target: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let address = loopback_addr();
        let listener = TcpListener::bind(&address).expect("proxy listens");
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (target, open2, connections2) = (target.to_string(), open.clone(), connections.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !open2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let mut live = connections2.lock().unwrap();
                live.extend([client.try_clone().expect("clone"), server.try_clone().expect("clone")]);
                drop(live);
                for (mut from, mut to) in
                    [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { address, open, connections }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
