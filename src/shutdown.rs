//! Turns SIGTERM and SIGINT into a cancelled token.

use tokio_util::sync::CancellationToken;

pub fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        token.cancel();
    });
}

/// SIGHUP, as a permit on the returned `Notify` (kept when nobody waits). Installed at
/// start, so a SIGHUP never terminates the process.
pub fn on_hangup() -> std::sync::Arc<tokio::sync::Notify> {
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => {
                let n = notify.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP received: reloading the config");
                        n.notify_one();
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP; config reloads are off"),
        }
    }
    notify
}
