//! `PersistenceWorker`: one supervised actor claiming and compacting room
//! tasks, one room at a time. Any error or panic stops the actor; its
//! supervisor restarts it (after a backoff) and the unfinished task, still
//! pending for it in the consumer group, is reclaimed after the debounce.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use thiserror::Error;

use super::{callback, WorkerShared};
use crate::backoff::Backoff;
use crate::config::WorkerConfig;
use crate::document::{Documents, LoadError};
use crate::metrics;
use crate::storage::{Storage, StorageError};
use crate::streams::{RedisError, RedisStreams, StreamId, Task};

/// A room lock lives about as long as the task debounce and is renewed while
/// the compaction runs, so a killed worker blocks its rooms only briefly.
fn room_lock_ttl(debounce: Duration) -> Duration {
    debounce.clamp(Duration::from_secs(3), Duration::from_secs(30))
}
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a stream update waiting for what it builds on (lost in a
/// failover, say, until a client that has it sends it again, usually within
/// seconds) is kept, and everything after it: past this it is given up, so
/// that a room's stream does not keep growing for it.
const WAITING_UPDATES_KEPT: Duration = Duration::from_secs(600);

/// Where a compaction after `last_ms` trims the stream (entries before it
/// go), and how many `waiting` updates (in stream order) that drops. An
/// update waiting for what it builds on is not in what was stored: it
/// stays, with what came after it, for a later compaction, up to
/// [`WAITING_UPDATES_KEPT`].
fn trim_point(last_ms: u64, lifetime: Duration, waiting: &[StreamId]) -> (u64, usize) {
    let mut trim_before = last_ms.saturating_sub(lifetime.as_millis() as u64);
    let keep_from = last_ms.saturating_sub(WAITING_UPDATES_KEPT.as_millis() as u64);
    if let Some(first) = waiting.iter().find(|id| id.ms >= keep_from) {
        trim_before = trim_before.min(first.ms);
    }
    let dropped = waiting.iter().filter(|id| id.ms < trim_before).count();
    (trim_before, dropped)
}

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl WorkerError {
    /// Whether retrying the task can never help.
    pub fn is_permanent(&self) -> bool {
        match self {
            WorkerError::Redis(_) => false,
            WorkerError::Load(e) => e.is_permanent(),
            WorkerError::Storage(e) => e.is_permanent(),
        }
    }
}

/// What one round of claiming did.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundReport {
    pub claimed: usize,
    pub persisted: usize,
}

pub struct PersistenceWorker {
    consumer: String,
    config: WorkerConfig,
    redis: RedisStreams,
    storage: Arc<dyn Storage>,
    documents: Arc<Documents>,
    shared: Arc<WorkerShared>,
    http: Option<awc::Client>,
    /// Restarts after failed rounds wait longer each time.
    backoff: Backoff,
    restart_delay: Duration,
}

impl PersistenceWorker {
    pub fn new(
        consumer: String,
        config: WorkerConfig,
        redis: RedisStreams,
        storage: Arc<dyn Storage>,
        documents: Arc<Documents>,
        shared: Arc<WorkerShared>,
    ) -> Self {
        PersistenceWorker {
            consumer,
            config,
            redis,
            storage,
            documents,
            shared,
            http: None,
            backoff: Backoff::new(Duration::from_millis(250), MAX_BACKOFF),
            restart_delay: Duration::ZERO,
        }
    }

    fn schedule_round(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        ctx.run_later(delay, |act, ctx| act.run_round(ctx));
    }

    fn run_round(&mut self, ctx: &mut Context<Self>) {
        // A stopping worker starts nothing new; rounds in flight finish.
        if self.shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        self.shared.active_rounds.fetch_add(1, Ordering::Relaxed);
        let round = Round {
            consumer: self.consumer.clone(),
            config: self.config.clone(),
            redis: self.redis.clone(),
            storage: self.storage.clone(),
            documents: self.documents.clone(),
            shared: self.shared.clone(),
            http: self.http.clone(),
        };
        let work = async move { round.run().await };
        ctx.spawn(AssertUnwindSafe(work).catch_unwind().into_actor(self).map(|outcome, act, ctx| {
            act.shared.active_rounds.fetch_sub(1, Ordering::Relaxed);
            match outcome {
                Ok(Ok(report)) => {
                    if act.backoff.failures() > 0 {
                        tracing::info!(consumer = %act.consumer, "worker recovered");
                        act.backoff.reset();
                    }
                    let delay = if report.claimed == 0 { act.config.idle_wait } else { Duration::ZERO };
                    act.schedule_round(delay, ctx);
                }
                Ok(Err(e)) => {
                    metrics::ERRORS.inc();
                    tracing::error!(consumer = %act.consumer, error = %e, "worker round failed; restarting");
                    ctx.stop();
                }
                Err(_) => {
                    tracing::error!(consumer = %act.consumer, "worker round panicked; restarting");
                    ctx.stop();
                }
            }
        }));
    }
}

impl Actor for PersistenceWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.http.is_none() {
            self.http = Some(awc::Client::default());
        }
        let delay = std::mem::take(&mut self.restart_delay);
        self.schedule_round(delay, ctx);
    }
}

impl Supervised for PersistenceWorker {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restart_delay = self.backoff.next_delay();
        tracing::debug!(consumer = %self.consumer, failures = self.backoff.failures(), "restarting persistence actor");
    }
}

/// Everything one round needs, detached from the actor.
struct Round {
    consumer: String,
    config: WorkerConfig,
    redis: RedisStreams,
    storage: Arc<dyn Storage>,
    documents: Arc<Documents>,
    shared: Arc<WorkerShared>,
    http: Option<awc::Client>,
}

impl Round {
    async fn run(&self) -> Result<RoundReport, WorkerError> {
        let tasks = self
            .redis
            .claim_tasks(
                &self.consumer,
                self.config.task_debounce,
                self.config.claim_count,
            )
            .await?;
        let mut report = RoundReport {
            claimed: tasks.len(),
            persisted: 0,
        };
        for task in &tasks {
            metrics::WORKER_TASKS.inc();
            match self.compact(task).await {
                Ok(persisted) => report.persisted += usize::from(persisted),
                // Redis trouble affects every task: let the supervisor restart us.
                Err(e @ WorkerError::Redis(_)) => return Err(e),
                // Retrying can never help: say so once, keep the stream for an
                // operator (never deleted unpersisted), and drop the task.
                Err(e) if e.is_permanent() => {
                    metrics::WORKER_PERMANENT_FAILURES.inc();
                    tracing::error!(stream = %task.stream_key, error = %e, "gave up on this room for good; its stream is kept");
                }
                // A room that cannot be compacted (storage down, a corrupt
                // document) must not hold up the other rooms of the batch; its
                // task stays pending and comes back after the debounce.
                Err(e) => {
                    metrics::ERRORS.inc();
                    tracing::error!(stream = %task.stream_key, error = %e, "compaction failed; will retry");
                }
            }
        }
        Ok(report)
    }

    /// Compacts one room; true if it persisted a new version.
    async fn compact(&self, task: &Task) -> Result<bool, WorkerError> {
        if self.redis.delete_room_if_empty(task).await? {
            tracing::debug!(stream = %task.stream_key, "removed empty room stream and its task");
            return Ok(false);
        }
        let Some((room, docid)) = self.redis.keys().parse_room_stream(&task.stream_key) else {
            tracing::warn!(stream = %task.stream_key, "dropping task for a key that is not a room stream");
            self.redis.drop_task(task).await?;
            return Ok(false);
        };
        let ttl = room_lock_ttl(self.config.task_debounce);
        if !self
            .redis
            .lock_room(&task.stream_key, &self.consumer, ttl)
            .await?
        {
            // Another worker is on it; this task comes back after the debounce.
            tracing::debug!(room = %room, "room is being compacted by another worker");
            return Ok(false);
        }
        self.shared.hold_lock(&task.stream_key, &self.consumer);
        let result = tokio::select! {
            result = self.compact_locked(task, &room, &docid) => result,
            lost = self.keep_lock(&task.stream_key, ttl) => {
                tracing::warn!(room = %room, error = ?lost.err(), "lost the room lock mid-compaction; leaving the room to its new owner");
                Ok(false)
            }
        };
        // A task that can never succeed goes while the lock is held, so no
        // other actor picks it up in between; if it was gone already, another
        // actor gave up on it (and said so).
        let result = match result {
            Err(e) if e.is_permanent() && !self.redis.drop_task(task).await? => Ok(false),
            other => other,
        };
        if let Err(e) = self
            .redis
            .unlock_room(&task.stream_key, &self.consumer)
            .await
        {
            tracing::warn!(room = %room, error = %e, "could not release room lock; it expires by itself");
        }
        self.shared.release_lock(&task.stream_key, &self.consumer);
        result
    }

    /// Renews the room lock until it is lost (returns) or the caller stops polling.
    async fn keep_lock(&self, stream_key: &str, ttl: Duration) -> Result<(), RedisError> {
        loop {
            tokio::time::sleep(ttl / 3).await;
            if !self
                .redis
                .renew_room_lock(stream_key, &self.consumer, ttl)
                .await?
            {
                return Ok(());
            }
        }
    }

    async fn compact_locked(
        &self,
        task: &Task,
        room: &str,
        docid: &str,
    ) -> Result<bool, WorkerError> {
        let started = Instant::now();
        let (doc, _) = self
            .documents
            .load(
                &self.redis,
                self.storage.as_ref(),
                room,
                docid,
                true,
                Vec::new,
            )
            .await?;
        // Several stored pieces are merged into one even when the stream added nothing.
        let persist = doc.changed_by_stream || doc.references.len() > 1;
        if persist {
            let update_v2 = doc.update_v2.clone().unwrap_or_default();
            let size = update_v2.len();
            self.storage
                .persist_doc(room, docid, update_v2.clone(), doc.state_vector.clone())
                .await?;
            if !doc.references.is_empty() {
                self.storage
                    .delete_references(room, docid, &doc.references)
                    .await?;
            }
            if let (Some(url), Some(http)) = (&self.config.update_callback, &self.http) {
                let (http, url, room) = (http.clone(), url.clone(), room.to_owned());
                let timeout = self.config.update_callback_timeout;
                actix::spawn(async move {
                    callback::send(&http, &url, &room, update_v2, timeout).await
                });
            }
            metrics::WORKER_PERSISTS.inc();
            metrics::WORKER_PERSIST_SECONDS.observe(started.elapsed().as_secs_f64());
            tracing::info!(
                room,
                bytes = size,
                replaced = doc.references.len(),
                ms = started.elapsed().as_millis() as u64,
                "persisted document"
            );
        }
        let last_ms = doc.last_id.ms.max(task.id.ms);
        let (trim_before, dropped) =
            trim_point(last_ms, self.config.min_message_lifetime, &doc.waiting);
        if dropped > 0 {
            tracing::warn!(
                room,
                updates = dropped,
                "dropping stream updates that waited ten minutes for what they build on"
            );
        }
        self.redis.finish_compaction(task, trim_before).await?;
        Ok(persist)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFETIME: Duration = Duration::from_secs(60);
    const NOW: u64 = 10_000_000;

    fn at(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    #[test]
    fn without_waiting_updates_the_stream_keeps_the_lifetime() {
        assert_eq!(trim_point(NOW, LIFETIME, &[]), (NOW - 60_000, 0));
    }

    #[test]
    fn the_trim_stops_at_the_first_waiting_update() {
        let waiting = [at(NOW - 300_000), at(NOW - 200_000)];
        assert_eq!(trim_point(NOW, LIFETIME, &waiting), (NOW - 300_000, 0));
        // One younger than the lifetime changes nothing.
        assert_eq!(
            trim_point(NOW, LIFETIME, &[at(NOW - 1_000)]),
            (NOW - 60_000, 0)
        );
    }

    #[test]
    fn waiting_updates_are_given_up_after_ten_minutes() {
        let waiting = [at(NOW - 700_000), at(NOW - 500_000)];
        assert_eq!(trim_point(NOW, LIFETIME, &waiting), (NOW - 500_000, 1));
        let all_old = [at(NOW - 900_000), at(NOW - 700_000)];
        assert_eq!(trim_point(NOW, LIFETIME, &all_old), (NOW - 60_000, 2));
    }
}
