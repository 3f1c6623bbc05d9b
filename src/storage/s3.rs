//! S3 storage (any S3-compatible endpoint, path-style): one object per stored
//! piece at `enc(room)/enc(docid)/<uuid v4>`, as @y/redis writes them.

use futures_util::future::{BoxFuture, FutureExt};
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, BucketConfiguration, Region};

use super::{merge_pieces, BoxError, Reference, Storage, StorageError, StoredDoc};
use crate::secret::Secret;
use crate::streams::encode_uri_component;

/// The region of S3-compatible servers that have none (MinIO, moto), and AWS's default.
pub const DEFAULT_REGION: &str = "us-east-1";

#[derive(Debug, Clone)]
pub struct S3Config {
    pub endpoint: String,
    pub port: u16,
    pub ssl: bool,
    /// Signing region (`S3_REGION`); a new bucket is created there.
    pub region: String,
    /// `S3_ACCESS_KEY` / `S3_SECRET_KEY`; None: the standard AWS chain.
    pub keys: Option<S3Keys>,
    pub bucket: String,
}

#[derive(Debug, Clone)]
pub struct S3Keys {
    pub access_key: String,
    pub secret_key: Secret,
}

/// rust-s3 sends a LocationConstraint naming our custom region when it
/// creates a bucket, which S3-compatible servers reject for us-east-1; its
/// documented switch turns that off. Call before any other thread starts.
pub fn skip_s3_location_constraint() {
    if std::env::var_os("RUST_S3_SKIP_LOCATION_CONSTRAINT").is_none() {
        std::env::set_var("RUST_S3_SKIP_LOCATION_CONSTRAINT", "true");
    }
}

pub struct S3Storage {
    bucket: Box<Bucket>,
}

/// Maps a rust-s3 or task error to a transient failure of `action`.
fn failed<E: Into<BoxError>>(action: impl Into<String>) -> impl FnOnce(E) -> StorageError {
    move |e| StorageError::unavailable("s3", action, e)
}

/// Fails on any status but 2xx (rust-s3 is built without `fail-on-err`).
fn check(status: u16, what: &str, key: &str) -> Result<(), StorageError> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(failed(format!("{what} {key:?}"))(format!(
            "answered HTTP {status}"
        )))
    }
}

/// A piece listed but gone when fetched: a compaction replaced it meanwhile.
const RETRIEVE_ATTEMPTS: usize = 3;

fn doc_prefix(room: &str, docid: &str) -> String {
    format!(
        "{}/{}/",
        encode_uri_component(room),
        encode_uri_component(docid)
    )
}

impl S3Storage {
    /// Connects and creates the bucket if it does not exist.
    pub async fn connect(config: &S3Config) -> Result<Self, StorageError> {
        let scheme = if config.ssl { "https" } else { "http" };
        let region = Region::Custom {
            region: config.region.clone(),
            endpoint: format!("{scheme}://{}:{}", config.endpoint, config.port),
        };
        let credentials = credentials(config.keys.as_ref()).await?;
        let bucket = Bucket::new(&config.bucket, region.clone(), credentials.clone())
            .map_err(failed("configure the bucket"))?
            .with_path_style();
        if !bucket
            .exists()
            .await
            .map_err(failed("check that the bucket exists"))?
        {
            // us-east-1 takes no LocationConstraint, every other region needs
            // one (rust-s3's own choice is switched off by
            // skip_s3_location_constraint, as it names us-east-1 too).
            let mut bucket_config = BucketConfiguration::default();
            if config.region != DEFAULT_REGION {
                bucket_config.set_region(region.clone());
            }
            let created =
                Bucket::create_with_path_style(&config.bucket, region, credentials, bucket_config)
                    .await
                    .map_err(failed("create the bucket"))?;
            // 409: someone else created it meanwhile.
            if !created.success() && created.response_code != 409 {
                return Err(failed(format!("create bucket {:?}", config.bucket))(
                    format!("HTTP {} {}", created.response_code, created.response_text),
                ));
            }
        }
        Ok(S3Storage { bucket })
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let pages = self
            .bucket
            .list(prefix.to_owned(), None)
            .await
            .map_err(failed(format!("list {prefix:?}")))?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.contents)
            .map(|o| o.key)
            .collect())
    }

    /// Fetches every listed piece; None if one vanished (replaced meanwhile).
    async fn fetch_all(
        &self,
        keys: Vec<String>,
    ) -> Result<Option<Vec<(Reference, Vec<u8>)>>, StorageError> {
        let mut pieces = Vec::with_capacity(keys.len());
        for key in keys {
            let response = match self.bucket.get_object(&key).await {
                Ok(r) => r,
                Err(S3Error::HttpFailWithBody(404, _)) => return Ok(None),
                Err(e) => return Err(failed(format!("GET {key:?}"))(e)),
            };
            if response.status_code() == 404 {
                return Ok(None);
            }
            check(response.status_code(), "GET", &key)?;
            pieces.push((key, response.to_vec()));
        }
        Ok(Some(pieces))
    }
}

/// The configured keys, or else the standard AWS chain: `AWS_ACCESS_KEY_ID`
/// / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`), the `~/.aws/credentials`
/// profile, web identity (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`, as
/// EKS IRSA sets them), the ECS/EKS container endpoint, EC2 instance
/// metadata. Temporary credentials are refreshed by rust-s3 before they
/// expire. The chain makes blocking HTTP calls, hence the blocking pool.
async fn credentials(keys: Option<&S3Keys>) -> Result<Credentials, StorageError> {
    if let Some(keys) = keys {
        return Credentials::new(
            Some(&keys.access_key),
            Some(&keys.secret_key.0),
            None,
            None,
            None,
        )
        .map_err(failed("use S3_ACCESS_KEY / S3_SECRET_KEY"));
    }
    tokio::task::spawn_blocking(Credentials::default)
        .await
        .map_err(failed("look up credentials"))?
        .map_err(failed(
            "find credentials: S3_ACCESS_KEY / S3_SECRET_KEY are unset and the AWS chain \
             (AWS_ACCESS_KEY_ID, ~/.aws/credentials, AWS_WEB_IDENTITY_TOKEN_FILE, \
             container or instance metadata) found none",
        ))
}

impl Storage for S3Storage {
    fn check(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        async move {
            match self.bucket.exists().await {
                Ok(true) => Ok(()),
                Ok(false) => Err(failed("check")(format!(
                    "bucket {:?} is gone",
                    self.bucket.name()
                ))),
                Err(e) => Err(failed("check")(e)),
            }
        }
        .boxed()
    }

    fn retrieve_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredDoc>, StorageError>> {
        async move {
            let prefix = doc_prefix(room, docid);
            for _ in 0..RETRIEVE_ATTEMPTS {
                let keys = self.list_keys(&prefix).await?;
                if let Some(pieces) = self.fetch_all(keys).await? {
                    return Ok(merge_pieces(pieces));
                }
            }
            Err(failed(format!("read {prefix:?}"))(
                "pieces kept vanishing while being read",
            ))
        }
        .boxed()
    }

    fn persist_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
        update_v2: Vec<u8>,
        _state_vector: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            let key = format!("{}{}", doc_prefix(room, docid), uuid::Uuid::new_v4());
            let response = self
                .bucket
                .put_object(&key, &update_v2)
                .await
                .map_err(failed(format!("PUT {key:?}")))?;
            check(response.status_code(), "PUT", &key)
        }
        .boxed()
    }

    fn delete_references<'a>(
        &'a self,
        _room: &'a str,
        _docid: &'a str,
        references: &'a [Reference],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            for key in references {
                let response = self
                    .bucket
                    .delete_object(key)
                    .await
                    .map_err(failed(format!("DELETE {key:?}")))?;
                if response.status_code() != 404 {
                    check(response.status_code(), "DELETE", key)?;
                }
            }
            Ok(())
        }
        .boxed()
    }
}
