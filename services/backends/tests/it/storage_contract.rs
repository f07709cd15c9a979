//! One contract, two stores: a local directory and S3 (on moto) must behave alike.

use std::sync::Arc;
use std::time::Duration;

use backends::storage::{Download, LocalStore, ObjectStore, S3Store, StorageError};
use testkit::moto;

async fn check_store(store: Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("upload.bin");
    std::fs::write(&source, b"video bytes").unwrap();

    assert!(!store.exists("original/a.mp4").await.unwrap());
    store.put_file("original/a.mp4", &source).await.unwrap();
    assert!(store.exists("original/a.mp4").await.unwrap());

    let copy = dir.path().join("copy.bin");
    store.get_to_file("original/a.mp4", &copy).await.unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), b"video bytes");

    std::fs::write(&source, b"second").unwrap();
    store.put_file("processed/a.mp4", &source).await.unwrap();
    assert_eq!(store.list("original/").await.unwrap(), ["original/a.mp4"]);
    assert_eq!(
        store.list("").await.unwrap(),
        ["original/a.mp4", "processed/a.mp4"]
    );

    match store
        .download("processed/a.mp4", Duration::from_secs(60), "mi-jugada.mp4")
        .await
        .unwrap()
    {
        Download::LocalFile(path) => assert_eq!(std::fs::read(path).unwrap(), b"second"),
        Download::Presigned(url) => {
            let body = reqwest::get(&url)
                .await
                .unwrap()
                .error_for_status()
                .unwrap();
            // A browser that follows the link saves the file rather than showing it.
            assert_eq!(
                body.headers()["content-disposition"],
                "attachment; filename=\"mi-jugada.mp4\""
            );
            assert_eq!(body.bytes().await.unwrap().as_ref(), b"second");
        }
    }

    store.delete("original/a.mp4").await.unwrap();
    store.delete("original/a.mp4").await.unwrap(); // deleting twice is fine
    assert!(!store.exists("original/a.mp4").await.unwrap());
    let missing = store
        .get_to_file("original/a.mp4", &copy)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, StorageError::NotFound { .. }),
        "{missing:?}"
    );
}

#[tokio::test]
async fn local_store_meets_the_contract() {
    let root = tempfile::tempdir().unwrap();
    check_store(Arc::new(LocalStore::new(root.path()))).await;
}

#[tokio::test]
async fn s3_store_meets_the_contract() {
    let moto = moto();
    let bucket = moto.create_bucket().await;
    let client = backends::storage::s3_client(&moto.aws_settings()).await;
    // moto's account: every call names it as the bucket's expected owner, as on AWS.
    let store = S3Store::new(client, bucket).expecting_owner(Some(testkit::MOTO_ACCOUNT.into()));
    check_store(Arc::new(store)).await;
}
