//! The storage contract against a real S3-compatible server (moto), in its
//! own test binary because rust-s3 reads an environment switch.

mod support;

use std::io::{Read, Write};

use support::{contract, S3Server};
use y_redis::config::Secret;
use y_redis::storage::{self, S3Config, S3Keys, StorageConfig};

fn config(server: &S3Server, region: &str, bucket: String) -> S3Config {
    S3Config {
        endpoint: "127.0.0.1".into(),
        port: server.port,
        ssl: false,
        region: region.into(),
        keys: Some(S3Keys {
            access_key: "test".into(),
            secret_key: Secret("testsecret".into()),
        }),
        bucket,
    }
}

#[tokio::test]
async fn s3_storage_contract() {
    y_redis::storage::skip_s3_location_constraint();
    let server = S3Server::start();
    let config = StorageConfig::S3(config(
        &server,
        "us-east-1",
        format!("ydocs-{}", support::random_suffix()),
    ));
    let storage = storage::open(&config)
        .await
        .expect("open s3 storage (creates the bucket)");
    contract(storage).await;
    // Opening again finds the bucket.
    storage::open(&config).await.expect("reopen s3 storage");
}

/// S3_REGION signs the requests and places a new bucket: moto, like AWS,
/// takes the region from the signature and refuses a bucket outside
/// us-east-1 without a matching LocationConstraint.
#[tokio::test]
async fn s3_region_is_used_for_signing_and_bucket_creation() {
    y_redis::storage::skip_s3_location_constraint();
    let server = S3Server::start();
    let name = format!("ydocs-eu-{}", support::random_suffix());
    let c = config(&server, "eu-west-2", name.clone());
    let storage = storage::open(&StorageConfig::S3(c.clone()))
        .await
        .expect("open s3 storage in eu-west-2 (creates the bucket there)");
    let update = support::text_update_v2(7, "in eu-west-2");
    storage
        .persist_doc("room", "index", update.clone(), vec![])
        .await
        .expect("persist");
    let stored = storage
        .retrieve_doc("room", "index")
        .await
        .expect("retrieve")
        .expect("stored");
    assert_eq!(support::read_v2(&stored.pieces[0]).0, "in eu-west-2");

    // Ask moto where the bucket lives (GetBucketLocation; moto checks no
    // signature, only the region named in the Authorization header).
    let location = http_get(
        server.port,
        &format!("/{name}?location"),
        "AWS4-HMAC-SHA256 Credential=test/20240101/eu-west-2/s3/aws4_request, \
         SignedHeaders=host, Signature=0",
    );
    assert!(location.starts_with("HTTP/1.1 200"), "{location}");
    assert!(
        location.contains(">eu-west-2</LocationConstraint>"),
        "{location}"
    );
    // Reopening finds the bucket in its region.
    storage::open(&StorageConfig::S3(c))
        .await
        .expect("reopen s3 storage in eu-west-2");
}

/// One plain HTTP/1.1 GET; the whole response as text.
fn http_get(port: u16, path: &str, authorization: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to moto");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}
