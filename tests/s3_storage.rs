//! The storage contract against a real S3-compatible server (moto), in its
//! own test binary because rust-s3 reads an environment switch.

mod support;

use support::{contract, S3Server};
use y_redis::storage::{self, S3Config, StorageConfig};

#[tokio::test]
async fn s3_storage_contract() {
    y_redis::storage::skip_s3_location_constraint();
    let server = S3Server::start();
    let config = StorageConfig::S3(S3Config {
        endpoint: "127.0.0.1".into(),
        port: server.port,
        ssl: false,
        access_key: "test".into(),
        secret_key: "testsecret".into(),
        bucket: format!("ydocs-{}", support::random_suffix()),
    });
    let storage = storage::open(&config)
        .await
        .expect("open s3 storage (creates the bucket)");
    contract(storage).await;
    // Opening again finds the bucket.
    storage::open(&config).await.expect("reopen s3 storage");
}
