//! Real handshakes on loopback sockets against [`Incoming`]: rotation of the server's
//! files, and client certificates verified when offered.

use std::path::Path;
use std::sync::Arc;

use flotilla_tls::testing::{Ca, Leaf, Validity};
use flotilla_tls::{Alpn, Incoming, ServerFiles, ServerTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves `tls` on a loopback port: every accepted connection gets one byte, and its
/// peer certificates' count goes to the returned channel.
async fn serve(tls: Arc<ServerTls>) -> (u16, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut incoming = Incoming::new(listener, tls, Alpn::H2).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(mut stream)) = incoming.next().await {
            let peers = stream
                .get_ref()
                .1
                .peer_certificates()
                .map_or(0, |c| c.len());
            let _ = tx.send(peers);
            let _ = stream.write_all(b"!").await;
            let _ = stream.flush().await;
        }
    });
    (port, rx)
}

/// A handshake and one byte read: `Err` with rustls's words when either side refused.
async fn dial(port: u16, ca: &str, client: Option<&Leaf>) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Ok(1) => Ok(()),
        Ok(_) => Err("closed before the first byte".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn write_server(dir: &Path, leaf: &Leaf, client_ca: Option<&Ca>) -> ServerFiles {
    let (cert, key) = leaf.write(dir, "server");
    ServerFiles {
        cert,
        key,
        client_ca: client_ca.map(|ca| ca.write(dir, "client-ca")),
    }
}

#[tokio::test]
async fn rotated_files_serve_new_connections_and_broken_ones_are_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (Ca::new("one"), Ca::new("two"));
    let files = write_server(dir.path(), &one.leaf(&["127.0.0.1"], Validity::Now), None);
    let tls = ServerTls::load(files.clone()).unwrap();
    let (port, _) = serve(tls.clone()).await;
    dial(port, &one.pem, None).await.unwrap();
    assert!(dial(port, &two.pem, None).await.is_err());
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");

    // Rotate to a certificate of another CA.
    two.leaf(&["127.0.0.1"], Validity::Now)
        .write(dir.path(), "server");
    assert!(tls.reload_if_changed().unwrap());
    dial(port, &two.pem, None).await.unwrap();
    let e = dial(port, &one.pem, None).await.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");

    // A half-written key: the previous files keep serving; tried once.
    std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nnot base64").unwrap();
    let e = tls.reload_if_changed().unwrap_err().to_string();
    assert!(e.starts_with("--tls-key "), "{e}");
    assert!(
        !tls.reload_if_changed().unwrap(),
        "the same broken files are not tried again"
    );
    dial(port, &two.pem, None).await.unwrap();

    // A key that is not the certificate's.
    std::fs::write(&files.key, one.leaf(&["x"], Validity::Now).key).unwrap();
    let e = tls.reload_if_changed().unwrap_err().to_string();
    assert!(e.starts_with("--tls-key: "), "{e}");
    dial(port, &two.pem, None).await.unwrap();
}

#[tokio::test]
async fn client_certificates_are_asked_for_and_checked_after_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("ca"), Ca::new("other"));
    let files = write_server(
        dir.path(),
        &ca.leaf(&["127.0.0.1"], Validity::Now),
        Some(&ca),
    );
    let tls = ServerTls::load(files).unwrap();
    assert!(tls.verifies_clients());
    let (port, mut peers) = serve(tls.clone()).await;

    // Every client finishes the handshake, with or without a certificate; what it
    // presented is checked afterwards, with the reason.
    let der = |leaf: &Leaf| vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()];
    let good = ca.leaf(&["eu-west"], Validity::Now);
    dial(port, &ca.pem, Some(&good)).await.unwrap();
    assert_eq!(
        peers.recv().await,
        Some(1),
        "the server saw the certificate"
    );
    tls.check_client(Some(&der(&good)), "eu-west").unwrap();
    let e = tls.check_client(Some(&der(&good)), "us-east").unwrap_err();
    assert!(e.contains("does not name this cluster"), "{e}");
    dial(port, &ca.pem, None).await.unwrap();
    assert_eq!(peers.recv().await, Some(0), "a client may present none");
    let e = tls.check_client(None, "eu-west").unwrap_err();
    assert!(e.starts_with("no client certificate"), "{e}");

    for (what, leaf, says) in [
        (
            "expired",
            ca.leaf(&["eu-west"], Validity::Expired),
            "expired",
        ),
        (
            "another CA's",
            other.leaf(&["eu-west"], Validity::Now),
            "UnknownIssuer",
        ),
        (
            "self-signed",
            Leaf::self_signed(&["eu-west"]),
            "UnknownIssuer",
        ),
    ] {
        dial(port, &ca.pem, Some(&leaf)).await.unwrap();
        assert_eq!(peers.recv().await, Some(1), "{what}");
        let e = tls.check_client(Some(&der(&leaf)), "eu-west").unwrap_err();
        assert!(e.contains("refused") && e.contains(says), "{what}: {e}");
    }
}

#[test]
fn a_certificate_is_valid_for_its_subject_alternative_names_only() {
    let ca = Ca::new("ca");
    let der = |leaf: &Leaf| CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap();
    let a = der(&ca.leaf(&["eu-west", "127.0.0.1"], Validity::Now));
    assert!(flotilla_tls::valid_for(&a, "eu-west"));
    assert!(flotilla_tls::valid_for(&a, "127.0.0.1"));
    assert!(!flotilla_tls::valid_for(&a, "us-east"));
    assert!(!flotilla_tls::valid_for(&a, "west"));
    assert!(!flotilla_tls::valid_for(&a, "not a name"));
    assert!(!flotilla_tls::valid_for(
        &CertificateDer::from(vec![1, 2, 3]),
        "eu-west"
    ));
}

#[test]
fn bad_files_are_refused_naming_their_flag() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let (cert, key) = ca.leaf(&["h"], Validity::Now).write(dir.path(), "s");
    let nothing = dir.path().join("empty.pem");
    std::fs::write(&nothing, "").unwrap();
    let load = |cert: &Path, key: &Path, ca: Option<&Path>| {
        ServerTls::load(ServerFiles {
            cert: cert.into(),
            key: key.into(),
            client_ca: ca.map(Into::into),
        })
        .unwrap_err()
        .to_string()
    };
    let e = load(&nothing, &key, None);
    assert!(
        e.starts_with("--tls-cert ") && e.contains("no certificate"),
        "{e}"
    );
    let e = load(&cert, &nothing, None);
    assert!(
        e.starts_with("--tls-key ") && e.contains("no private key"),
        "{e}"
    );
    let e = load(&cert, &key, Some(&nothing));
    assert!(
        e.starts_with("--client-ca ") && e.contains("no certificate"),
        "{e}"
    );
    let e = load(&cert, &dir.path().join("missing.key"), None);
    assert!(
        e.starts_with("--tls-key ") && e.contains("missing.key"),
        "{e}"
    );
    assert!(
        ServerFiles::from_flags(Some(cert.clone()), None, None)
            .unwrap_err()
            .to_string()
            .starts_with("--tls-key: required")
    );
    assert!(
        ServerFiles::from_flags(None, None, Some(cert))
            .unwrap_err()
            .to_string()
            .starts_with("--client-ca: needs")
    );
}
