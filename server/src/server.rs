//! Running the HTTP server: [`start`] serves on an already-bound listener on
//! its own thread and runtime (tests bind `127.0.0.1:0`); [`ServerHandle::stop`]
//! stops gracefully and flushes the store.

use crate::config::Config;
use crate::http::{self, AuthFailureLimiter, Metrics};
use crate::services::Services;
use crate::storage::Repo;
use actix_web::dev::Service as _;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Instant;

/// A running server.
pub struct ServerHandle {
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    /// The plain-HTTP address serving `/metrics`, if one is bound.
    pub metrics_addr: Option<std::net::SocketAddr>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    repo: Arc<dyn Repo>,
}

impl ServerHandle {
    /// Stop gracefully: in-flight requests finish, then the store is flushed.
    pub fn stop(mut self) {
        drop(self.handle.stop(true));
        self.finish();
    }

    /// Join the server thread, wait for the workers to release the store
    /// (so the data dir can be reopened at once), flush.
    fn finish(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&self.repo) > 1 && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if let Err(e) = self.repo.flush() {
            tracing::error!(error = %e, "flushing the store failed");
        }
    }
}

impl Drop for ServerHandle {
    /// A handle dropped without `stop` still stops the server (gracefully).
    fn drop(&mut self) {
        if self.thread.is_some() {
            drop(self.handle.stop(true));
            self.finish();
        }
    }
}

/// Connection timeouts from the configuration.
struct Timeouts {
    request: std::time::Duration,
    disconnect: std::time::Duration,
    keep_alive: actix_web::http::KeepAlive,
    tls_handshake: std::time::Duration,
}

/// The control socket, with the sled store it backs up (none on PostgreSQL).
type Controlled = (
    crate::backup::ControlSocket,
    Option<Arc<crate::storage::Store>>,
);

/// The owner-only control socket of the data dir (without it the server
/// still serves; backups and key rotations then need it stopped).
fn bind_control(data_dir: &std::path::Path) -> Option<crate::backup::ControlSocket> {
    match crate::backup::ControlSocket::bind(data_dir) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "no control socket: online backups and key rotations are unavailable");
            None
        }
    }
}

/// Open the configured backend and the control socket: on sled for online
/// backups and key rotations, on PostgreSQL (backed up with its own tools)
/// for key rotations.
fn open_backend(config: &Config) -> anyhow::Result<(Arc<dyn Repo>, Option<Controlled>)> {
    use crate::storage::StorageConfig;
    match config.storage_config()? {
        StorageConfig::Sled => {
            let store =
                crate::storage::open_store(&config.data_dir).context("cannot open the database")?;
            let repo: Arc<dyn Repo> = store.clone();
            Ok((
                repo,
                bind_control(&config.data_dir).map(|c| (c, Some(store))),
            ))
        }
        StorageConfig::Postgres(url) => {
            let store = crate::storage::postgres::PgStore::connect(&url)
                .with_context(|| format!("cannot open the database {url}"))?;
            tracing::info!(database = %url, "storage: PostgreSQL");
            Ok((
                Arc::new(store),
                bind_control(&config.data_dir).map(|c| (c, None)),
            ))
        }
    }
}

/// Start serving on `listener`; returns once it accepts connections.
pub fn start(config: Config, listener: std::net::TcpListener) -> anyhow::Result<ServerHandle> {
    // Programmatic configurations get the same checks as loaded ones (k ≥ 50, …).
    config.validate()?;
    let secrets = crate::keyfiles::ServerSecrets::load(&config.data_dir)?;
    let tls_key = config.tls_key_path();
    let tls = crate::tls::server_config(
        &config.tls_cert_path(),
        &tls_key,
        crate::tls::key_policy(&config.data_dir, &tls_key),
    )?;
    let (repo, control) = open_backend(&config)?;
    let services = Arc::new(
        Services::new(repo.clone(), config.clone(), secrets).context("cannot load the store")?,
    );
    let dispatcher = Arc::new(
        crate::services::delivery::Dispatcher::new(services.clone())
            .context("cannot set up webhook delivery")?,
    );
    services
        .check_key_fingerprints()
        .context("the data dir's keys do not match the store")?;
    services
        .resume_rotation()
        .context("cannot resume the unfinished server key rotation")?;
    let discarded = services
        .discard_unfinished_audiences()
        .context("cannot discard the audiences of interrupted finishes")?;
    if discarded > 0 {
        tracing::warn!(discarded, "audiences of interrupted finishes discarded");
    }
    let addr = listener.local_addr()?;
    let metrics_listener = config.metrics_listen.and_then(bind_metrics);
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let failures_per_minute = config.auth_failures_per_minute;
    let (tx, rx) = std::sync::mpsc::channel::<anyhow::Result<actix_web::dev::ServerHandle>>();
    let workers = config.workers;
    let timeouts = Timeouts {
        request: config.client_request_timeout,
        disconnect: config.client_disconnect_timeout,
        keep_alive: if config.keep_alive.is_zero() {
            actix_web::http::KeepAlive::Disabled
        } else {
            actix_web::http::KeepAlive::Timeout(config.keep_alive)
        },
        tls_handshake: config.tls_handshake_timeout,
    };
    let cleanup_every = config.cleanup_interval;
    let thread = std::thread::Builder::new()
        .name("onboard-http".into())
        .spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let metrics = web::Data::new(Metrics::default());
                let state = web::Data::new(services.clone());
                let limiter = web::Data::new(AuthFailureLimiter::new(failures_per_minute));
                let console = services.config.console;
                let metrics_server = match metrics_listener {
                    Some(l) => match serve_metrics(l, state.clone(), metrics.clone()) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    },
                    None => None,
                };
                let metrics_handle = metrics_server.as_ref().map(|s| s.handle());
                if let Some(s) = metrics_server {
                    actix_web::rt::spawn(s);
                }
                let server = HttpServer::new(move || {
                    let metrics_mw = metrics.clone();
                    App::new()
                        .app_data(state.clone())
                        .app_data(metrics.clone())
                        .app_data(limiter.clone())
                        .wrap_fn(move |req, srv| {
                            let started = Instant::now();
                            let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
                            let metrics = metrics_mw.clone();
                            let fut = srv.call(req);
                            async move {
                                let res = fut.await?;
                                let seconds = started.elapsed().as_secs_f64();
                                let status = res.status().as_u16();
                                metrics.observe(&route, status, seconds);
                                // Route patterns only: never paths, queries or bodies.
                                tracing::info!(route = %route, status, ms = (seconds * 1000.0) as u64, "request");
                                Ok(res)
                            }
                        })
                        .configure(|cfg| crate::console::configure(cfg, console))
                        .configure(http::configure)
                })
                .workers(workers)
                .client_request_timeout(timeouts.request)
                .client_disconnect_timeout(timeouts.disconnect)
                .keep_alive(timeouts.keep_alive)
                .tls_handshake_timeout(timeouts.tls_handshake)
                .disable_signals()
                .listen_rustls_0_23(listener, tls);
                let server = match server {
                    Ok(s) => s.run(),
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = tx.send(Ok(server.handle()));
                if let Some((control, store)) = control {
                    if let Err(e) = control.serve(store, services.clone()) {
                        tracing::warn!(error = %e, "control socket not served");
                    }
                }
                // Push delivery: the outbox is sent from here, also what a
                // previous run left undelivered.
                actix_web::rt::spawn(dispatcher.run());
                let cleaner = services.clone();
                actix_web::rt::spawn(async move {
                    let mut tick = actix_web::rt::time::interval(cleanup_every);
                    loop {
                        tick.tick().await;
                        let s = cleaner.clone();
                        // Once across the servers sharing the store.
                        match crate::services::blocking(move || s.cleanup_if_leading()).await {
                            Ok((a, j)) if a + j > 0 => {
                                tracing::info!(audiences = a, jobs = j, "clean-up")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::error!(error = %e, "clean-up failed"),
                        }
                    }
                });
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "server stopped with an error");
                }
                if let Some(h) = metrics_handle {
                    h.stop(true).await;
                }
            });
        })?;
    let handle = rx.recv().context("server thread ended before starting")??;
    tracing::info!(%addr, "serving over TLS");
    if let Some(metrics) = metrics_addr {
        tracing::info!(%metrics, "serving /metrics over plain HTTP");
    }
    Ok(ServerHandle {
        addr,
        metrics_addr,
        handle,
        thread: Some(thread),
        repo,
    })
}

/// Bind the metrics address; without it the API is still served (like the
/// control socket), with a warning naming the key.
fn bind_metrics(addr: std::net::SocketAddr) -> Option<std::net::TcpListener> {
    match std::net::TcpListener::bind(addr) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "metrics_listen cannot be bound: no /metrics");
            None
        }
    }
}

/// The plain-HTTP server of `/metrics` alone: one worker, no TLS, no API.
fn serve_metrics(
    listener: std::net::TcpListener,
    state: web::Data<Arc<Services>>,
    metrics: web::Data<Metrics>,
) -> anyhow::Result<actix_web::dev::Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(metrics.clone())
            .configure(http::configure_metrics)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
