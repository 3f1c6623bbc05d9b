//! Shared helpers of the Rust integration tests: real services made private
//! to one test (a fresh Postgres database, a moto S3 server, a Redis prefix).
#![allow(dead_code)] // each test file uses its own subset

mod contract;

#[allow(unused_imports)] // not every test file runs the storage contract
pub use contract::contract;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, StateVector, Text, Transact};

pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A database created for one test and dropped with it.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub fn create() -> Self {
        let admin =
            std::env::var("TEST_POSTGRES_ADMIN_URL").unwrap_or_else(|_| POSTGRES_ADMIN_URL.into());
        let name = format!("yredis_test_{}", random_suffix());
        let mut conn = PgConnection::establish(&admin)
            .unwrap_or_else(|e| panic!("tests need Postgres at {admin}: {e}"));
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .expect("create test database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        TestDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin =
            std::env::var("TEST_POSTGRES_ADMIN_URL").unwrap_or_else(|_| POSTGRES_ADMIN_URL.into());
        if let Ok(mut conn) = PgConnection::establish(&admin) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn);
        }
    }
}

/// A moto S3 server (PyPI `moto[server]`) on a free port, killed on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tests need python3 with moto[server] (pip install 'moto[server]')");
        let server = S3Server { child, port };
        wait_for_port(port, Duration::from_secs(30));
        server
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listened on port {port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A document update (v2) of client `client_id` inserting `text` into Y.Text "text".
pub fn text_update_v2(client_id: u64, text: &str) -> Vec<u8> {
    let doc = yrs::Doc::with_client_id(client_id);
    let t = doc.get_or_insert_text("text");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    txn.encode_state_as_update_v2(&StateVector::default())
}

/// The "text" of a document given as update v2, and its state vector.
pub fn read_v2(update_v2: &[u8]) -> (String, StateVector) {
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("text");
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v2(update_v2).expect("valid v2 update"))
        .expect("applies");
    let txn = doc.transact();
    (t.get_string(&txn), txn.state_vector())
}

/// The y-websocket client of the in-process tests. (Their servers and
/// workers are in `inproc.rs`, which `tests/inproc.rs` includes itself: the
/// server's future needs a raised recursion limit in every crate that
/// names it.)
pub mod ws;
