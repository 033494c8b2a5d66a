//! One address in front of several instances, as a TCP load balancer: each connection goes to
//! the first backend that accepts it, and stays there. Stops accepting on drop. `pause` holds
//! every byte in both directions, connections left open (a network that hangs), until `resume`.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Front {
    pub port: u16,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
}

impl Front {
    pub fn start(backends: Vec<u16>) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind front");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let paused = Arc::new(AtomicBool::new(false));
        let holding = paused.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let backend = backends.iter().find_map(|p| {
                    TcpStream::connect_timeout(
                        &([127, 0, 0, 1], *p).into(),
                        Duration::from_millis(500),
                    )
                    .ok()
                });
                match backend {
                    Some(backend) => splice(client, backend, holding.clone()),
                    None => drop(client),
                }
            }
        });
        Front { port, stop, paused }
    }

    /// Holds every byte from now on, in both directions, without closing anything.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Lets the held bytes and the next ones through again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

/// Copies both ways until either side closes, holding what it read while `paused`.
fn splice(a: TcpStream, b: TcpStream, paused: Arc<AtomicBool>) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        let paused = paused.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                while paused.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        });
    };
    copy(a, b2);
    copy(b, a2);
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
