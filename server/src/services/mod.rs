//! Services: the domain logic between the HTTP handlers and storage. Every
//! method blocks (storage and curve arithmetic): handlers call them through
//! `web::block`. Each concern extends [`Services`] in its own file.

pub mod audiences;
pub mod audit;
pub mod auth;
pub mod delivery;
pub mod graph;
pub mod jobs;
pub mod privacy;
pub mod recovery;
pub mod release;
pub mod rotation;
pub mod seal;
pub mod secrets;
pub mod webhooks;

use crate::config::Config;
pub use crate::keyfiles::ServerSecrets;
use crate::storage::Repo;
use bloomfilter::Bloom;
use onboard_protocol::PointBytes;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// The shared state of a running server.
pub struct Services {
    /// Storage.
    pub repo: Arc<dyn Repo>,
    /// Settings.
    pub config: Config,
    /// The server blinding key `b` and whether a rotation holds it back
    /// (see [`rotation`]): every use of `b` or of data blinded by it holds
    /// the read side through [`Services::key_gate`].
    key_state: std::sync::RwLock<rotation::KeyState>,
    /// What the rotation thread is doing, for `keys rotate --status`.
    rotation_status: Mutex<rotation::Status>,
    /// The API-key pepper, and the previous one during a pepper rotation.
    peppers: std::sync::RwLock<secrets::Peppers>,
    /// The sealing key(s) (see [`seal::Sealer`]).
    sealer: std::sync::RwLock<Arc<seal::Sealer>>,
    /// Key of person pseudonyms, cookie tags and audit pseudonyms.
    identity: Zeroizing<[u8; 32]>,
    /// Serialises pepper rotations.
    pepper_lock: Mutex<()>,
    /// HMAC key of the audit chain (kept outside the store).
    audit_key: audit::AuditKey,
    /// Bloom filter in front of the exact opt-out set.
    optout_bloom: Mutex<Bloom<[u8; 32]>>,
    /// Serialises graph import writes (person allocation).
    import_lock: Mutex<()>,
    /// Serialises job record updates.
    job_lock: Mutex<()>,
    /// Serialises audience creation and membership changes.
    audience_lock: Mutex<()>,
    /// Jobs whose finish is running, so a second finish is refused.
    finishing: Mutex<std::collections::HashSet<String>>,
    /// Serialises audit appends (the chain is linear).
    audit_lock: Mutex<()>,
    /// Identifiers imported since start, for /metrics.
    pub identifiers_imported: AtomicU64,
    /// Serialises webhook endpoint changes.
    webhook_lock: Mutex<()>,
    /// Wakes the webhook dispatcher when messages are enqueued.
    pub outbox_wake: tokio::sync::Notify,
    /// Webhook delivery counters, for /metrics.
    pub delivery_metrics: delivery::DeliveryMetrics,
}

/// An in-process mutex and the store lock of the same name, held together:
/// the mutex orders this server's threads, the store lock the servers
/// sharing the store (free on sled).
pub(crate) struct Exclusive<'a> {
    _store: crate::storage::HeldLock,
    _local: MutexGuard<'a, ()>,
}

impl Services {
    /// Take `local`, then the store lock `name`.
    pub(crate) fn exclusive<'a>(
        &self,
        local: &'a Mutex<()>,
        name: &str,
    ) -> Result<Exclusive<'a>, crate::storage::StoreError> {
        let local = lock(local);
        let store = self.repo.lock(name)?;
        Ok(Exclusive {
            _store: store,
            _local: local,
        })
    }
}

/// The store lock a job's finish holds (see `jobs/finish.rs`).
pub(crate) fn finish_lock(job: &str) -> String {
    format!("finish/{job}")
}

/// Take a lock even if a panicking thread poisoned it (the data is in the store).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Services {
    /// Build the services over a store, loading the opt-out filter.
    pub fn new(
        repo: Arc<dyn Repo>,
        config: Config,
        secrets: ServerSecrets,
    ) -> Result<Self, crate::storage::StoreError> {
        let ServerSecrets {
            key,
            pepper,
            old_pepper,
            seal,
            identity,
            audit_key,
        } = secrets;
        let services = Self {
            repo,
            config,
            key_state: std::sync::RwLock::new(rotation::KeyState::steady(key)),
            rotation_status: Mutex::new(rotation::Status::default()),
            peppers: std::sync::RwLock::new(secrets::Peppers::new(pepper, old_pepper)),
            sealer: std::sync::RwLock::new(Arc::new(seal::Sealer::new(seal))),
            identity,
            pepper_lock: Mutex::new(()),
            audit_key,
            optout_bloom: Mutex::new(new_bloom(0)),
            import_lock: Mutex::new(()),
            job_lock: Mutex::new(()),
            audience_lock: Mutex::new(()),
            finishing: Mutex::new(Default::default()),
            audit_lock: Mutex::new(()),
            identifiers_imported: AtomicU64::new(0),
            webhook_lock: Mutex::new(()),
            outbox_wake: tokio::sync::Notify::new(),
            delivery_metrics: Default::default(),
        };
        services.reload_optout_filter()?;
        Ok(services)
    }

    /// The identity key (person pseudonyms, cookie tags, audit pseudonyms).
    pub(crate) fn identity_key(&self) -> &[u8; 32] {
        &self.identity
    }

    /// The sealing key(s) now.
    pub(crate) fn sealer(&self) -> Arc<seal::Sealer> {
        self.sealer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_sealer(&self, sealer: seal::Sealer) {
        *self.sealer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(sealer);
    }

    /// Refill the opt-out filter from the store (after a key rotation
    /// replaced every opt-out point).
    pub(crate) fn reload_optout_filter(&self) -> Result<(), crate::storage::StoreError> {
        let optouts = self.repo.optouts()?;
        let mut bloom = new_bloom(optouts.len());
        for p in &optouts {
            bloom.set(&p.0);
        }
        *lock(&self.optout_bloom) = bloom;
        Ok(())
    }

    /// Exact opt-out check of each of `points` behind the bloom filter,
    /// taking the filter's lock once.
    pub(crate) fn opted_out_each(
        &self,
        points: &[PointBytes],
    ) -> Result<Vec<bool>, crate::storage::StoreError> {
        let maybe: Vec<bool> = {
            let bloom = lock(&self.optout_bloom);
            points.iter().map(|p| bloom.check(&p.0)).collect()
        };
        points
            .iter()
            .zip(maybe)
            .map(|(p, maybe)| {
                if maybe {
                    self.repo.is_opted_out(p)
                } else {
                    Ok(false)
                }
            })
            .collect()
    }
}

fn new_bloom(existing: usize) -> Bloom<[u8; 32]> {
    let capacity = (existing * 2).max(100_000);
    match Bloom::new_for_fp_rate(capacity, 0.001) {
        Ok(b) => b,
        // Only fails for zero sizes, which `max` rules out; fall back to a fixed size.
        Err(_) => Bloom::new(1 << 20, 100_000).unwrap_or_else(|_| unreachable_bloom()),
    }
}

#[allow(clippy::panic)]
fn unreachable_bloom() -> Bloom<[u8; 32]> {
    panic!("bloom filter sizes are constant and non-zero")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 (seconds) of a Unix time.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// A random object ID: prefix + 32 hex characters.
pub fn new_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Run a blocking service call and flatten its errors.
pub async fn blocking<T, F>(f: F) -> Result<T, crate::error::ApiError>
where
    F: FnOnce() -> Result<T, crate::error::ApiError> + Send + 'static,
    T: Send + 'static,
{
    actix_web::web::block(f)
        .await
        .map_err(|e| crate::error::ApiError::Internal(format!("blocking task: {e}")))?
}
