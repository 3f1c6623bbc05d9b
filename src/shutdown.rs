//! Waiting for the signals that end a process (SIGTERM from orchestrators, SIGINT from a terminal).

pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
