//! Reading a TLS ClientHello for its SNI without taking part in the handshake, as zone ingresses
//! and egresses route: bytes go in as they arrive, and the reader says when a whole ClientHello
//! has come (with its server name, if any), that it needs more, or why the bytes are not one.
//! The caller forwards the same bytes untouched. Pure: no sockets.

/// Refuse ClientHellos larger than this (a real one is a few hundred bytes to a few KiB).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Accumulates the first bytes of a connection until they hold a whole ClientHello.
#[derive(Default)]
pub struct ClientHelloReader {
    acceptor: rustls::server::Acceptor,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for ClientHelloReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHelloReader")
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// What the bytes so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not a whole ClientHello yet.
    NeedMore,
    /// A whole ClientHello, and its server name (None when it sends none).
    Complete(Option<String>),
}

impl ClientHelloReader {
    /// Takes the next bytes of the connection.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Hello, String> {
        self.bytes.extend_from_slice(chunk);
        let mut fresh = chunk;
        while !fresh.is_empty() {
            self.acceptor
                .read_tls(&mut fresh)
                .map_err(|e| format!("not a TLS ClientHello: {e}"))?;
        }
        match self.acceptor.accept() {
            Ok(Some(accepted)) => Ok(Hello::Complete(
                accepted.client_hello().server_name().map(str::to_string),
            )),
            Ok(None) if self.bytes.len() < MAX_CLIENT_HELLO => Ok(Hello::NeedMore),
            Ok(None) => Err("ClientHello too large".into()),
            Err((e, _)) => Err(format!("not a TLS ClientHello: {e}")),
        }
    }

    /// Every byte pushed so far, to forward.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_in_pieces_gives_its_sni_and_garbage_is_refused() {
        let hello = crate::fixtures::client_hello("echo.default.mesh");
        let mut r = ClientHelloReader::default();
        let (a, b) = hello.split_at(7);
        assert_eq!(r.push(a), Ok(Hello::NeedMore));
        assert_eq!(
            r.push(b),
            Ok(Hello::Complete(Some("echo.default.mesh".into())))
        );
        assert_eq!(r.into_bytes(), hello);
        assert!(
            ClientHelloReader::default()
                .push(b"GET / HTTP/1.1\r\n")
                .is_err()
        );
    }
}
