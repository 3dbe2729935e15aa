//! Downloads against a local HTTP server on 127.0.0.1 serving generated files (and the real
//! Fashion-MNIST files when present): a good file is cached, a corrupted one is rejected and
//! never cached.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ddpm_data::{download_verified, DataError, IdxDataset, Split};

/// Serves `files` by path on a free loopback port for at most `max_requests` requests, then
/// stops. Returns the base URL.
fn serve(files: HashMap<String, Vec<u8>>, max_requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let files = Arc::new(files);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_string();
            let _ = match files.get(&path) {
                Some(body) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|_| stream.write_all(body))
                }
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    base
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    format!("{:x}", Md5::digest(bytes))
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn good_files_are_cached_and_corrupt_ones_never_are() {
    let good: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut corrupt = good.clone();
    corrupt[50_000] ^= 0xff;
    let files = HashMap::from([
        ("/good.gz".to_string(), good.clone()),
        ("/corrupt.gz".to_string(), corrupt),
    ]);
    let base = serve(files, 3);
    let cache = tempfile::tempdir().unwrap();

    let dest = cache.path().join("good.gz");
    download_verified(&format!("{base}/good.gz"), &dest, &md5_hex(&good)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), good);

    let dest = cache.path().join("corrupt.gz");
    let err = download_verified(&format!("{base}/corrupt.gz"), &dest, &md5_hex(&good)).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupt.gz"), "{err}");

    let err = download_verified(
        &format!("{base}/missing.gz"),
        &cache.path().join("missing.gz"),
        "00",
    )
    .unwrap_err();
    assert!(
        matches!(err, DataError::Download { .. }) && err.to_string().contains("missing.gz"),
        "{err}"
    );

    // Only the good file is in the cache: no corrupt file, no partial download.
    assert_eq!(leftovers(cache.path()), vec![cache.path().join("good.gz")]);
}

#[test]
fn the_real_dataset_downloads_verifies_and_loads() {
    let shared =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fashion-mnist");
    if !shared.join("train-images-idx3-ubyte.gz").is_file() {
        eprintln!(
            "SKIPPED: Fashion-MNIST is not at {}; the generated-file test covers downloads",
            shared.display()
        );
        return;
    }
    let dataset = IdxDataset::FashionMnist;
    let mut files = HashMap::new();
    for split in [Split::Train, Split::Test] {
        let (images, labels) = dataset.file_names(split);
        for name in [images, labels] {
            files.insert(
                format!("/ok/{name}"),
                std::fs::read(shared.join(name)).unwrap(),
            );
        }
    }
    // A mirror whose test labels are truncated.
    let mut broken = files
        .clone()
        .into_iter()
        .map(|(k, v)| (k.replace("/ok/", "/bad/"), v))
        .collect::<HashMap<_, _>>();
    let labels = broken.get_mut("/bad/t10k-labels-idx1-ubyte.gz").unwrap();
    labels.truncate(labels.len() - 100);
    files.extend(broken);
    let base = serve(files, 8);

    let bad_dir = tempfile::tempdir().unwrap();
    let err = dataset
        .download(&format!("{base}/bad/"), bad_dir.path())
        .unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err:?}");
    assert!(!bad_dir.path().join("t10k-labels-idx1-ubyte.gz").exists());
    assert!(leftovers(bad_dir.path())
        .iter()
        .all(|p| !p.to_string_lossy().ends_with(".part")));

    let dir = tempfile::tempdir().unwrap();
    dataset.download(&format!("{base}/ok"), dir.path()).unwrap();
    let test = dataset.load(dir.path(), Split::Test, true).unwrap();
    assert_eq!(test.len(), 10_000);
}
