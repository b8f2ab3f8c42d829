//! Push delivery on PostgreSQL ([`OutboxRepo`]): one row per endpoint and
//! per message. A message row goes in the same transaction as the job or
//! audience record whose change causes it; `seq` comes from `outbox_seq`,
//! so a destination's messages keep the order they were enqueued in across
//! servers; `pending` (partially indexed) is what the dispatchers scan.

use super::audiences::PUT_AUDIENCE;
use super::jobs::PUT_JOB;
use super::*;

const PUT_MESSAGE: &str = "INSERT INTO outbox (id, destination, seq, pending, ended_ms, record)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (id) DO UPDATE SET pending = EXCLUDED.pending,
         ended_ms = EXCLUDED.ended_ms, record = EXCLUDED.record";

/// Whether a message waits, and since when it has ended if it has.
fn state(m: &OutboxMessage) -> (bool, Option<i64>) {
    let pending = m.status == DeliveryStatus::Pending;
    (pending, m.ended_ms.filter(|_| !pending).map(i64_of))
}

impl PgStore {
    /// Write one record (`sql` with `params`) and enqueue `messages`, their
    /// `seq` drawn in order, in one transaction.
    fn put_with_messages(
        &self,
        sql: &str,
        params: Params<'_>,
        mut messages: Vec<OutboxMessage>,
    ) -> StoreResult<()> {
        self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            tx.execute(sql, params).await.map_err(db_err)?;
            let put = tx.prepare_cached(PUT_MESSAGE).await.map_err(db_err)?;
            for m in &mut messages {
                let seq: i64 = tx
                    .query_one("SELECT nextval('outbox_seq')", &[])
                    .await
                    .map_err(db_err)?
                    .get(0);
                m.seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt("outbox"))?;
                let (pending, ended) = state(m);
                tx.execute(
                    &put,
                    &[&m.id, &m.destination, &seq, &pending, &ended, &json(m)?],
                )
                .await
                .map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)
        })
    }
}

impl OutboxRepo for PgStore {
    fn put_webhook_endpoint(&self, e: &WebhookEndpoint) -> StoreResult<()> {
        self.execute(
            "INSERT INTO webhook_endpoints (destination, record) VALUES ($1, $2)
             ON CONFLICT (destination) DO UPDATE SET record = EXCLUDED.record",
            &[&e.destination, &json(e)?],
        )?;
        Ok(())
    }

    fn webhook_endpoint(&self, destination: &str) -> StoreResult<Option<WebhookEndpoint>> {
        self.record(
            "webhook_endpoints",
            "SELECT record FROM webhook_endpoints WHERE destination = $1",
            &[&destination],
        )
    }

    fn delete_webhook_endpoint(&self, destination: &str) -> StoreResult<bool> {
        let n = self.execute(
            "DELETE FROM webhook_endpoints WHERE destination = $1",
            &[&destination],
        )?;
        Ok(n == 1)
    }

    fn put_job_with_messages(&self, job: &Job, messages: Vec<OutboxMessage>) -> StoreResult<()> {
        let (touched, record) = (i64_of(job.touched), json(job)?);
        let params: Params<'_> = &[&job.id, &job.advertiser, &job.status, &touched, &record];
        self.put_with_messages(PUT_JOB, params, messages)
    }

    fn put_audience_with_messages(
        &self,
        a: &Audience,
        messages: Vec<OutboxMessage>,
    ) -> StoreResult<()> {
        let (expires, record) = (i64_of(a.expires_unix), json(a)?);
        let params: Params<'_> = &[
            &a.id,
            &a.advertiser,
            &a.destination,
            &expires,
            &a.pulled,
            &record,
        ];
        self.put_with_messages(PUT_AUDIENCE, params, messages)
    }

    fn update_message(&self, m: &OutboxMessage) -> StoreResult<()> {
        let (pending, ended) = state(m);
        self.execute(
            "UPDATE outbox SET pending = $2, ended_ms = $3, record = $4 WHERE id = $1",
            &[&m.id, &pending, &ended, &json(m)?],
        )?;
        Ok(())
    }

    fn message(&self, id: &str) -> StoreResult<Option<OutboxMessage>> {
        self.record("outbox", "SELECT record FROM outbox WHERE id = $1", &[&id])
    }

    fn messages_of(&self, destination: &str, limit: usize) -> StoreResult<Vec<OutboxMessage>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.records(
            "outbox",
            "SELECT record FROM outbox WHERE destination = $1 ORDER BY seq DESC LIMIT $2",
            &[&destination, &limit],
        )
    }

    fn pending_heads(&self, per_destination: usize) -> StoreResult<Vec<OutboxMessage>> {
        let per_destination = i64::try_from(per_destination).unwrap_or(i64::MAX);
        self.records(
            "outbox",
            "SELECT record FROM (
                 SELECT record, destination, seq,
                        row_number() OVER (PARTITION BY destination ORDER BY seq) AS rank
                 FROM outbox WHERE pending
             ) heads WHERE rank <= $1 ORDER BY destination, seq",
            &[&per_destination],
        )
    }

    fn pending_count(&self) -> StoreResult<u64> {
        self.count("SELECT count(*) FROM outbox WHERE pending", &[])
    }

    fn prune_messages(&self, ended_before_ms: u64, limit: usize) -> StoreResult<usize> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let n = self.execute(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE ended_ms < $1 ORDER BY ended_ms LIMIT $2)",
            &[&i64_of(ended_before_ms), &limit],
        )?;
        Ok(n as usize)
    }
}
