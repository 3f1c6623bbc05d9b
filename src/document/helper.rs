//! The pool of document-engine helper processes (see [`super::engine`]):
//! at most `size` run at once, idle ones are reused and retired after a
//! minute, and one that dies, hangs or answers garbage is killed and
//! reported as [`HelperError::Crashed`].

use std::io;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::Semaphore;

use super::engine::{decode_reply, read_frame, write_frame, Assembled, EngineError};

/// How long an unused helper is kept.
const IDLE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum HelperError {
    /// The helper died or answered nothing usable while working on the request.
    #[error("the document engine crashed")]
    Crashed,
    #[error("the document engine did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot start the document engine: {0}")]
    Spawn(io::Error),
}

impl HelperError {
    /// Whether the request itself may be to blame (rather than the machine).
    pub fn blames_input(&self) -> bool {
        matches!(self, HelperError::Crashed | HelperError::Timeout(_))
    }
}

/// How to start a helper: a program and its arguments.
#[derive(Debug, Clone)]
pub struct EngineCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl EngineCommand {
    /// This very binary, run as `y-redis doc-helper --memory-mb <n>`.
    pub fn current_exe(memory_mb: u64) -> io::Result<Self> {
        Ok(EngineCommand {
            program: std::env::current_exe()?,
            args: vec![
                "doc-helper".into(),
                "--memory-mb".into(),
                memory_mb.to_string(),
            ],
        })
    }
}

struct Helper {
    child: Child,
    pipes: Option<(ChildStdin, ChildStdout)>,
    idle_since: Instant,
}

impl Helper {
    fn spawn(command: &EngineCommand) -> io::Result<Self> {
        let mut child = Command::new(&command.program)
            .args(&command.args)
            // Nothing secret reaches the process that handles untrusted bytes.
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pipes = child.stdin.take().zip(child.stdout.take());
        if pipes.is_none() {
            let _ = child.kill();
            return Err(io::Error::other("helper started without pipes"));
        }
        Ok(Helper {
            child,
            pipes,
            idle_since: Instant::now(),
        })
    }

    fn retire(mut self) {
        let _ = self.child.kill();
        // Reaped off the async threads: waiting on a killed child is quick but blocking.
        tokio::task::spawn_blocking(move || {
            let _ = self.child.wait();
        });
    }
}

pub struct EnginePool {
    command: EngineCommand,
    idle: Mutex<Vec<Helper>>,
    permits: Semaphore,
    timeout: Duration,
}

impl EnginePool {
    pub fn new(command: EngineCommand, size: usize, timeout: Duration) -> Arc<Self> {
        Arc::new(EnginePool {
            command,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
            timeout,
        })
    }

    fn take_idle(&self) -> Option<Helper> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        while let Some(helper) = idle.pop() {
            if now.duration_since(helper.idle_since) < IDLE_LIMIT {
                return Some(helper);
            }
            helper.retire();
        }
        None
    }

    /// Retires helpers that were not used for a minute.
    pub fn reap_idle(&self) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        let (keep, old): (Vec<_>, Vec<_>) = idle
            .drain(..)
            .partition(|h| now.duration_since(h.idle_since) < IDLE_LIMIT);
        *idle = keep;
        drop(idle);
        old.into_iter().for_each(Helper::retire);
    }

    /// Sends one encoded request to a helper and returns its answer.
    pub async fn run(
        &self,
        request: Vec<u8>,
    ) -> Result<Result<Assembled, EngineError>, HelperError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HelperError::Spawn(io::Error::other("engine pool closed")))?;
        let mut helper = match self.take_idle() {
            Some(helper) => helper,
            None => {
                let command = self.command.clone();
                tokio::task::spawn_blocking(move || Helper::spawn(&command))
                    .await
                    .map_err(|e| HelperError::Spawn(io::Error::other(e)))?
                    .map_err(HelperError::Spawn)?
            }
        };
        let Some((mut stdin, mut stdout)) = helper.pipes.take() else {
            helper.retire();
            return Err(HelperError::Crashed);
        };
        let exchange = tokio::task::spawn_blocking(move || {
            let reply = write_frame(&mut stdin, &request).and_then(|()| read_frame(&mut stdout));
            (stdin, stdout, reply)
        });
        let (stdin, stdout, reply) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(done)) => done,
            Ok(Err(_)) => {
                helper.retire();
                return Err(HelperError::Crashed);
            }
            // Killing the child ends the blocked read, which ends the task.
            Err(_) => {
                helper.retire();
                return Err(HelperError::Timeout(self.timeout));
            }
        };
        let answer = match reply {
            Ok(Some(frame)) => decode_reply(&frame).ok(),
            _ => None,
        };
        match answer {
            // After a panic the helper exits by itself; do not reuse it.
            Some(answer) if answer != Err(EngineError::Panicked) => {
                helper.pipes = Some((stdin, stdout));
                helper.idle_since = Instant::now();
                match self.idle.lock() {
                    Ok(mut idle) => idle.push(helper),
                    Err(_) => helper.retire(),
                }
                Ok(answer)
            }
            _ => {
                helper.retire();
                Err(HelperError::Crashed)
            }
        }
    }
}

impl Drop for EnginePool {
    fn drop(&mut self) {
        if let Ok(mut idle) = self.idle.lock() {
            for mut helper in idle.drain(..) {
                let _ = helper.child.kill();
                let _ = helper.child.wait();
            }
        }
    }
}
