//! Every storage backend passes the same contract, against real services:
//! Postgres (a fresh database), the filesystem, memory (S3: `s3_storage.rs`).

mod support;

use std::sync::Arc;

use support::{contract, TestDatabase};
use y_redis::storage::{self, MemoryStorage, StorageConfig};

#[tokio::test]
async fn memory_storage_contract() {
    contract(Arc::new(MemoryStorage::default())).await;
}

#[tokio::test]
async fn filesystem_storage_contract() {
    let dir = std::env::temp_dir().join(format!("yredis-fs-{}", support::random_suffix()));
    let storage = storage::open(&StorageConfig::Filesystem { dir: dir.clone() })
        .await
        .expect("open filesystem storage");
    contract(storage).await;
    // A crash mid-write leaves a temp file, which is never read as a piece.
    let room_dir = dir.join("plain").join("index");
    std::fs::create_dir_all(&room_dir).expect("mkdir");
    std::fs::write(room_dir.join(".tmp-crashed"), b"half a docu").expect("write temp");
    let storage = storage::open(&StorageConfig::Filesystem { dir: dir.clone() })
        .await
        .expect("reopen");
    assert!(storage
        .retrieve_doc("plain", "index")
        .await
        .expect("retrieve")
        .is_none());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_storage_contract() {
    let db = TestDatabase::create();
    let storage = storage::open(&StorageConfig::Postgres {
        url: y_redis::config::Secret(db.url.clone()),
    })
    .await
    .expect("open postgres storage");
    contract(storage).await;
}
