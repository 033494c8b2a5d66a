//! One address in front of several instances, as a TCP load balancer: each connection goes to
//! the first backend that accepts it, and stays there. Stops accepting on drop.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Front {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Front {
    pub fn start(backends: Vec<u16>) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind front");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
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
                    Some(backend) => splice(client, backend),
                    None => drop(client),
                }
            }
        });
        Front { port, stop }
    }
}

/// Copies both ways until either side closes.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
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
