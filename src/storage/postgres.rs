//! Postgres storage through diesel: table `yredis_docs_v1` exactly as
//! @y/redis lays it out (one row per stored piece, `r` its reference).
//! Queries run on the blocking pool over an r2d2 connection pool.

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use futures_util::future::{BoxFuture, FutureExt};

use super::{merge_pieces, BoxError, Reference, Storage, StorageError, StoredDoc};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Key of the session-level advisory lock that serializes migrations across
/// processes: every server, worker and `y-redis migrate` migrates at start,
/// and two concurrent `CREATE TABLE IF NOT EXISTS` can both try to create the
/// table (Postgres then fails one with a duplicate `pg_type` entry). The
/// value is the ASCII of "yredisMG", so it is unlikely to meet another
/// application's key in the same database.
pub const MIGRATION_LOCK_KEY: i64 = 0x7972_6564_6973_4d47;

diesel::table! {
    yredis_docs_v1 (room, doc, r) {
        room -> Text,
        doc -> Text,
        r -> Int4,
        #[sql_name = "update"]
        update_v2 -> Nullable<Bytea>,
        sv -> Nullable<Bytea>,
    }
}

type PgPool = Pool<ConnectionManager<PgConnection>>;

pub struct PostgresStorage {
    pool: PgPool,
}

/// Maps a diesel, r2d2 or task error to a transient failure of `action`.
fn failed<E: Into<BoxError>>(action: &'static str) -> impl FnOnce(E) -> StorageError {
    move |e| StorageError::unavailable("postgres", action, e)
}

impl PostgresStorage {
    /// Opens a pool on `url` and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || {
            let pool = Pool::builder()
                .max_size(8)
                // A client waiting for an initial sync should hear "try again" soon.
                .connection_timeout(std::time::Duration::from_secs(3))
                .build(ConnectionManager::<PgConnection>::new(url.clone()))
                .map_err(failed("connect"))?;
            // After the pool: its connect timeout has shown Postgres answers.
            migrate(&url)?;
            Ok(PostgresStorage { pool })
        })
        .await
        .map_err(failed("connect"))?
    }

    /// Runs `work` with a pooled connection on the blocking pool.
    fn with_conn<'a, T: Send + 'static>(
        &'a self,
        work: impl FnOnce(
                &mut PooledConnection<ConnectionManager<PgConnection>>,
            ) -> Result<T, StorageError>
            + Send
            + 'static,
    ) -> BoxFuture<'a, Result<T, StorageError>> {
        let pool = self.pool.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = pool.get().map_err(failed("get a pooled connection"))?;
                work(&mut conn)
            })
            .await
            .map_err(failed("run a query"))?
        }
        .boxed()
    }
}

/// Applies pending migrations while holding [`MIGRATION_LOCK_KEY`], so any
/// number of processes can start at once: the others wait, then find
/// nothing left to do. A dedicated connection holds the lock; closing it
/// releases the lock even when migrating or unlocking fails.
fn migrate(url: &str) -> Result<(), StorageError> {
    use diesel::sql_types::BigInt;
    let mut conn = PgConnection::establish(url).map_err(failed("connect to migrate"))?;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .map_err(failed("take the migration lock"))?;
    let migrated = conn.run_pending_migrations(MIGRATIONS).map(|_| ());
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut conn);
    migrated.map_err(failed("migrate"))?;
    unlocked.map_err(failed("release the migration lock"))?;
    Ok(())
}

impl Storage for PostgresStorage {
    fn check(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        self.with_conn(|conn| {
            diesel::sql_query("SELECT 1")
                .execute(conn)
                .map(|_| ())
                .map_err(failed("check"))
        })
    }

    fn retrieve_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredDoc>, StorageError>> {
        let (room_owned, docid_owned) = (room.to_owned(), docid.to_owned());
        let rows = self.with_conn(move |conn| {
            use yredis_docs_v1::dsl;
            dsl::yredis_docs_v1
                .filter(dsl::room.eq(&room_owned).and(dsl::doc.eq(&docid_owned)))
                .order(dsl::r)
                .select((dsl::r, dsl::update_v2))
                .load::<(i32, Option<Vec<u8>>)>(conn)
                .map_err(failed("read a document"))
        });
        async move {
            let pieces = rows
                .await?
                .into_iter()
                .filter_map(|(r, update)| update.map(|u| (r.to_string(), u)))
                .collect();
            Ok(merge_pieces(pieces))
        }
        .boxed()
    }

    fn persist_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
        update_v2: Vec<u8>,
        state_vector: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let (room, docid) = (room.to_owned(), docid.to_owned());
        self.with_conn(move |conn| {
            use yredis_docs_v1::dsl;
            diesel::insert_into(dsl::yredis_docs_v1)
                .values((
                    dsl::room.eq(room),
                    dsl::doc.eq(docid),
                    dsl::update_v2.eq(Some(update_v2)),
                    dsl::sv.eq(Some(state_vector)),
                ))
                .execute(conn)
                .map(|_| ())
                .map_err(failed("store a document"))
        })
    }

    fn delete_references<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
        references: &'a [Reference],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let ids: Result<Vec<i32>, _> = references.iter().map(|r| r.parse::<i32>()).collect();
        let (room, docid) = (room.to_owned(), docid.to_owned());
        let Ok(ids) = ids else {
            let reason = format!("references {references:?} are not postgres row ids");
            return async move {
                Err(StorageError::Corrupt {
                    room,
                    docid,
                    reason,
                })
            }
            .boxed();
        };
        self.with_conn(move |conn| {
            use yredis_docs_v1::dsl;
            diesel::delete(
                dsl::yredis_docs_v1.filter(
                    dsl::room
                        .eq(room)
                        .and(dsl::doc.eq(docid))
                        .and(dsl::r.eq_any(ids)),
                ),
            )
            .execute(conn)
            .map(|_| ())
            .map_err(failed("delete replaced pieces"))
        })
    }
}
