//! The sled side of push delivery ([`OutboxRepo`]): endpoints by destination,
//! messages by ID, and one index tree:
//!
//! - `p 0 destination 0 seq(8, BE)` → ID while a message is pending, so the
//!   dispatcher finds each destination's oldest pending message with one
//!   seek per destination;
//! - `a 0 destination 0 seq(8, BE)` → ID for every message (listings);
//! - `e 0 ended(8, BE) ID` → ID once a message is delivered or failed (pruning).
//!
//! Messages are written in the same sled transaction as the job or audience
//! record whose change causes them, with their index entries.

use super::sled::SledStore;
use super::sled_codec::{be, from_json, json, key, tx_err};
use super::sled_index::{audience_keys, job_keys, put_indexed};
use super::*;
use ::sled::transaction::{ConflictableTransactionError, TransactionalTree};
use ::sled::{Transactional, Tree};

const ENDPOINTS: &str = "webhook_endpoints";
const OUTBOX: &str = "outbox";
const OUTBOX_INDEX: &str = "outbox_index";

type TxResult<T> = Result<T, ConflictableTransactionError<()>>;

fn index_key(kind: u8, destination: &str, seq: u64) -> Vec<u8> {
    key(&[&[kind, 0], destination.as_bytes(), &[0], &seq.to_be_bytes()])
}

/// `e 0 ended(8, BE) id`: ended messages by end time, for pruning.
fn ended_key(ended_ms: u64, id: &str) -> Vec<u8> {
    key(&[b"e\0", &ended_ms.to_be_bytes(), id.as_bytes()])
}

/// Write a message and its index entries inside a transaction.
fn put_message_tx(
    outbox: &TransactionalTree,
    idx: &TransactionalTree,
    m: &OutboxMessage,
    value: &[u8],
) -> TxResult<()> {
    if let Some(old) = outbox.insert(m.id.as_bytes(), value)? {
        // An unreadable old record aborts: its index entries are unknown.
        let old: OutboxMessage =
            serde_json::from_slice(&old).map_err(|_| ConflictableTransactionError::Abort(()))?;
        if let Some(ended) = old.ended_ms {
            idx.remove(ended_key(ended, &old.id))?;
        }
    }
    if let (Some(ended), false) = (m.ended_ms, m.status == DeliveryStatus::Pending) {
        idx.insert(ended_key(ended, &m.id), m.id.as_bytes())?;
    }
    idx.insert(index_key(b'a', &m.destination, m.seq), m.id.as_bytes())?;
    let pending = index_key(b'p', &m.destination, m.seq);
    if m.status == DeliveryStatus::Pending {
        idx.insert(pending, m.id.as_bytes())?;
    } else {
        idx.remove(pending)?;
    }
    Ok(())
}

impl SledStore {
    fn tree(&self, name: &str) -> StoreResult<Tree> {
        // sled hands back the open tree: a map look-up after the first call.
        self.db.open_tree(name).map_err(be)
    }

    /// Assign sequence numbers in order and encode the messages.
    fn sequenced(
        &self,
        messages: Vec<OutboxMessage>,
    ) -> StoreResult<Vec<(OutboxMessage, Vec<u8>)>> {
        messages
            .into_iter()
            .map(|mut m| {
                m.seq = self.db.generate_id().map_err(be)?;
                let value = json(&m)?;
                Ok((m, value))
            })
            .collect()
    }

    fn load_messages(
        &self,
        outbox: &Tree,
        ids: impl Iterator<Item = StoreResult<Vec<u8>>>,
    ) -> StoreResult<Vec<OutboxMessage>> {
        let mut out = Vec::new();
        for id in ids {
            if let Some(v) = outbox.get(id?).map_err(be)? {
                out.push(from_json(OUTBOX, &v)?);
            }
        }
        Ok(out)
    }
}

/// An indexed JSON record to write: its ID, value and index entries.
struct Record<'a> {
    id: &'a str,
    value: Vec<u8>,
    keys: Vec<Vec<u8>>,
}

impl SledStore {
    /// Write an indexed record and enqueue `messages`, in one transaction.
    fn put_with_messages<T: serde::de::DeserializeOwned>(
        &self,
        records: &Tree,
        index: &Tree,
        record: Record<'_>,
        keys_of: impl Fn(&T) -> Vec<Vec<u8>>,
        messages: Vec<OutboxMessage>,
    ) -> StoreResult<()> {
        let messages = self.sequenced(messages)?;
        let (outbox, idx) = (self.tree(OUTBOX)?, self.tree(OUTBOX_INDEX)?);
        (records, index, &outbox, &idx)
            .transaction(|(records, index, outbox, idx)| {
                put_indexed(
                    records,
                    index,
                    record.id,
                    &record.value,
                    &record.keys,
                    &keys_of,
                )?;
                for (m, value) in &messages {
                    put_message_tx(outbox, idx, m, value)?;
                }
                Ok(())
            })
            .map_err(tx_err)
    }
}

impl OutboxRepo for SledStore {
    fn put_webhook_endpoint(&self, e: &WebhookEndpoint) -> StoreResult<()> {
        self.tree(ENDPOINTS)?
            .insert(e.destination.as_bytes(), json(e)?)
            .map_err(be)?;
        Ok(())
    }

    fn webhook_endpoint(&self, destination: &str) -> StoreResult<Option<WebhookEndpoint>> {
        self.tree(ENDPOINTS)?
            .get(destination.as_bytes())
            .map_err(be)?
            .map(|v| from_json(ENDPOINTS, &v))
            .transpose()
    }

    fn delete_webhook_endpoint(&self, destination: &str) -> StoreResult<bool> {
        Ok(self
            .tree(ENDPOINTS)?
            .remove(destination.as_bytes())
            .map_err(be)?
            .is_some())
    }

    fn put_job_with_messages(&self, job: &Job, messages: Vec<OutboxMessage>) -> StoreResult<()> {
        let record = Record {
            id: &job.id,
            value: json(job)?,
            keys: job_keys(job),
        };
        self.put_with_messages(&self.jobs, &self.job_index, record, job_keys, messages)
    }

    fn put_audience_with_messages(
        &self,
        a: &Audience,
        messages: Vec<OutboxMessage>,
    ) -> StoreResult<()> {
        let record = Record {
            id: &a.id,
            value: json(a)?,
            keys: audience_keys(a),
        };
        self.put_with_messages(
            &self.audiences,
            &self.audience_index,
            record,
            audience_keys,
            messages,
        )
    }

    fn update_message(&self, m: &OutboxMessage) -> StoreResult<()> {
        let value = json(m)?;
        let (outbox, idx) = (self.tree(OUTBOX)?, self.tree(OUTBOX_INDEX)?);
        (&outbox, &idx)
            .transaction(|(outbox, idx)| put_message_tx(outbox, idx, m, &value))
            .map_err(tx_err)
    }

    fn message(&self, id: &str) -> StoreResult<Option<OutboxMessage>> {
        self.tree(OUTBOX)?
            .get(id.as_bytes())
            .map_err(be)?
            .map(|v| from_json(OUTBOX, &v))
            .transpose()
    }

    fn messages_of(&self, destination: &str, limit: usize) -> StoreResult<Vec<OutboxMessage>> {
        let prefix = key(&[b"a\0", destination.as_bytes(), b"\0"]);
        let idx = self.tree(OUTBOX_INDEX)?;
        let ids = idx
            .scan_prefix(prefix)
            .values()
            .rev()
            .take(limit)
            .map(|v| v.map(|v| v.to_vec()).map_err(be));
        self.load_messages(&self.tree(OUTBOX)?, ids)
    }

    fn pending_heads(&self, per_destination: usize) -> StoreResult<Vec<OutboxMessage>> {
        let idx = self.tree(OUTBOX_INDEX)?;
        let outbox = self.tree(OUTBOX)?;
        let mut heads = Vec::new();
        let mut from = b"p\0".to_vec();
        loop {
            let Some(entry) = idx.range(from.as_slice()..).next() else {
                break;
            };
            let (k, id) = entry.map_err(be)?;
            let Some(rest) = k.strip_prefix(b"p\0") else {
                break;
            };
            let end = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or(StoreError::Corrupt(OUTBOX_INDEX))?;
            let _ = id;
            let prefix = key(&[b"p\0", &rest[..end], &[0]]);
            let ids = idx
                .scan_prefix(prefix)
                .values()
                .take(per_destination)
                .map(|v| v.map(|v| v.to_vec()).map_err(be));
            heads.extend(self.load_messages(&outbox, ids)?);
            // Past every entry of this destination: `destination 1` sorts after `destination 0 …`.
            from = key(&[b"p\0", &rest[..end], &[1]]);
        }
        Ok(heads)
    }

    fn prune_messages(&self, ended_before_ms: u64, limit: usize) -> StoreResult<usize> {
        let (outbox, idx) = (self.tree(OUTBOX)?, self.tree(OUTBOX_INDEX)?);
        let end = key(&[b"e\0", &ended_before_ms.to_be_bytes()]);
        // Each ended entry with its message (none if the record is gone already).
        let mut ended: Vec<(Vec<u8>, Option<OutboxMessage>)> = Vec::new();
        for entry in idx.range(b"e\0".to_vec()..end).take(limit) {
            let (k, id) = entry.map_err(be)?;
            let m = outbox.get(&id).map_err(be)?;
            ended.push((k.to_vec(), m.map(|v| from_json(OUTBOX, &v)).transpose()?));
        }
        (&outbox, &idx)
            .transaction(|(outbox, idx)| {
                for (k, m) in &ended {
                    idx.remove(k.as_slice())?;
                    if let Some(m) = m {
                        outbox.remove(m.id.as_bytes())?;
                        idx.remove(index_key(b'a', &m.destination, m.seq))?;
                        idx.remove(index_key(b'p', &m.destination, m.seq))?;
                    }
                }
                Ok(())
            })
            .map_err(tx_err)?;
        Ok(ended.len())
    }

    fn pending_count(&self) -> StoreResult<u64> {
        let mut n = 0;
        for k in self.tree(OUTBOX_INDEX)?.scan_prefix(b"p\0").keys() {
            k.map_err(be)?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, destination: &str) -> OutboxMessage {
        OutboxMessage {
            id: id.into(),
            destination: destination.into(),
            seq: 0,
            event: "audience.released".into(),
            audience_id: "a-1".into(),
            data: MessageData::Event(serde_json::json!({"n": 1})),
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            created_ms: 1,
            next_attempt_ms: 1,
            delivered_ms: None,
            ended_ms: None,
        }
    }

    fn job(status: &str) -> Job {
        Job {
            id: "j-1".into(),
            advertiser: "acme".into(),
            destination: "dsp".into(),
            kinds: vec![],
            key_fingerprint: String::new(),
            graph_version: 1,
            status: status.into(),
            created: String::new(),
            touched: 5,
            batches: 0,
            records: 0,
            pass: Default::default(),
            report: None,
            new_audience: false,
        }
    }

    #[test]
    fn messages_queue_per_destination_in_order_and_leave_the_queue_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store
            .put_job_with_messages(
                &job("finished"),
                vec![
                    message("m1", "dsp"),
                    message("m2", "dsp"),
                    message("m3", "dmp"),
                ],
            )
            .unwrap();
        assert_eq!(store.job("j-1").unwrap().unwrap().status, "finished");
        assert_eq!(
            store.jobs_touched_before("finished", 10, 10).unwrap().len(),
            1
        );
        assert_eq!(store.pending_count().unwrap(), 3);
        let mut heads: Vec<String> = store
            .pending_heads(1)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        heads.sort();
        assert_eq!(heads, ["m1", "m3"]);
        let mut m1 = store.message("m1").unwrap().unwrap();
        let m2 = store.message("m2").unwrap().unwrap();
        assert!(m1.seq < m2.seq);
        m1.status = DeliveryStatus::Delivered;
        store.update_message(&m1).unwrap();
        let mut heads: Vec<String> = store
            .pending_heads(1)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        heads.sort();
        assert_eq!(heads, ["m2", "m3"]);
        assert_eq!(store.pending_count().unwrap(), 2);
        let queued: Vec<String> = store
            .pending_heads(10)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(queued.len(), 2);
        let listed: Vec<String> = store
            .messages_of("dsp", 10)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(listed, ["m2", "m1"], "newest first");
        assert_eq!(store.messages_of("dsp", 1).unwrap().len(), 1);

        // Only ended messages are pruned, by their end time.
        m1.ended_ms = Some(100);
        store.update_message(&m1).unwrap();
        assert_eq!(store.prune_messages(100, 10).unwrap(), 0);
        assert_eq!(store.prune_messages(101, 10).unwrap(), 1);
        assert_eq!(store.message("m1").unwrap(), None);
        assert_eq!(store.messages_of("dsp", 10).unwrap().len(), 1);
        assert_eq!(store.pending_count().unwrap(), 2);
        // Redelivered (pending again), a message leaves the ended index.
        let mut m2 = store.message("m2").unwrap().unwrap();
        m2.status = DeliveryStatus::Failed;
        m2.ended_ms = Some(5);
        store.update_message(&m2).unwrap();
        m2.status = DeliveryStatus::Pending;
        m2.ended_ms = None;
        store.update_message(&m2).unwrap();
        assert_eq!(store.prune_messages(u64::MAX, 10).unwrap(), 0);
        assert!(store.message("m2").unwrap().is_some());
    }

    #[test]
    fn endpoints_are_kept_per_destination() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let e = WebhookEndpoint {
            destination: "dsp".into(),
            url: "https://dsp.example/hook".into(),
            mode: WebhookMode::Members,
            secrets: vec![],
            disabled: None,
            created: 1,
        };
        store.put_webhook_endpoint(&e).unwrap();
        assert_eq!(store.webhook_endpoint("dsp").unwrap(), Some(e));
        assert_eq!(store.webhook_endpoint("dmp").unwrap(), None);
        assert!(store.delete_webhook_endpoint("dsp").unwrap());
        assert!(!store.delete_webhook_endpoint("dsp").unwrap());
    }
}
