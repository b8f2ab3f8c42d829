//! Small records on PostgreSQL: principals and keys, opt-outs, erasure
//! tombstones, the audit chain and the ε budget.

use super::*;

impl PrincipalRepo for PgStore {
    fn create_principal(&self, p: &Principal) -> StoreResult<Result<(), AlreadyExists>> {
        let n = self.execute(
            "INSERT INTO principals (name, record) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&p.name, &json(p)?],
        )?;
        Ok(if n == 1 { Ok(()) } else { Err(AlreadyExists) })
    }
    fn principal(&self, name: &str) -> StoreResult<Option<Principal>> {
        self.record(
            "principals",
            "SELECT record FROM principals WHERE name = $1",
            &[&name],
        )
    }
    fn principals(&self) -> StoreResult<Vec<Principal>> {
        self.records(
            "principals",
            "SELECT record FROM principals ORDER BY name",
            &[],
        )
    }
    fn insert_key(&self, k: &ApiKeyRecord) -> StoreResult<()> {
        self.execute(
            "INSERT INTO api_keys (key_id, hash, record) VALUES ($1, $2, $3)
             ON CONFLICT (key_id) DO UPDATE SET hash = EXCLUDED.hash, record = EXCLUDED.record",
            &[&k.key_id, &&k.hash[..], &json(k)?],
        )?;
        Ok(())
    }
    fn key_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<ApiKeyRecord>> {
        self.query("SELECT record FROM api_keys WHERE hash = $1", &[&&hash[..]])?
            .first()
            .map(|r| from_json("api_keys", r.get(0)))
            .transpose()
    }
    fn key(&self, key_id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        self.record(
            "api_keys",
            "SELECT record FROM api_keys WHERE key_id = $1",
            &[&key_id],
        )
    }
    fn keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        self.records(
            "api_keys",
            "SELECT record FROM api_keys ORDER BY key_id",
            &[],
        )
    }
}

impl OptoutRepo for PgStore {
    fn add_optouts(&self, points: &[PointBytes]) -> StoreResult<usize> {
        let n = self.execute(
            "INSERT INTO optouts (point) SELECT unnest($1::bytea[]) ON CONFLICT DO NOTHING",
            &[&point_params(points)],
        )?;
        Ok(n as usize)
    }
    fn is_opted_out(&self, point: &PointBytes) -> StoreResult<bool> {
        Ok(!self
            .query("SELECT 1 FROM optouts WHERE point = $1", &[&&point.0[..]])?
            .is_empty())
    }
    fn optouts(&self) -> StoreResult<Vec<PointBytes>> {
        self.query("SELECT point FROM optouts ORDER BY point", &[])?
            .iter()
            .map(|r| point_of("optouts", r.get(0)))
            .collect()
    }
}

impl ErasureRepo for PgStore {
    fn add_erasure(
        &self,
        person: &PersonKey,
        points: &[PointBytes],
    ) -> StoreResult<Vec<PointBytes>> {
        let points = point_params(points);
        let rows = self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            tx.execute(
                "INSERT INTO erased_persons (person) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&&person[..]],
            )
            .await
            .map_err(db_err)?;
            tx.execute(
                "INSERT INTO erased_points (point, person)
                 SELECT unnest($1::bytea[]), $2 ON CONFLICT DO NOTHING",
                &[&points, &&person[..]],
            )
            .await
            .map_err(db_err)?;
            let rows = tx
                .query(
                    "SELECT point FROM erased_points WHERE person = $1 ORDER BY point",
                    &[&&person[..]],
                )
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            Ok(rows)
        })?;
        rows.iter()
            .map(|r| point_of("erased_points", r.get(0)))
            .collect()
    }
    fn is_erased_person(&self, person: &PersonKey) -> StoreResult<bool> {
        Ok(!self
            .query(
                "SELECT 1 FROM erased_persons WHERE person = $1",
                &[&&person[..]],
            )?
            .is_empty())
    }
    fn is_erased_point(&self, point: &PointBytes) -> StoreResult<bool> {
        Ok(!self
            .query(
                "SELECT 1 FROM erased_points WHERE point = $1 LIMIT 1",
                &[&&point.0[..]],
            )?
            .is_empty())
    }
    fn lift_erasure(&self, person: &PersonKey) -> StoreResult<bool> {
        let changed = self.execute_all(&[
            (
                "DELETE FROM erased_persons WHERE person = $1",
                &[&&person[..]],
            ),
            (
                "DELETE FROM erased_points WHERE person = $1",
                &[&&person[..]],
            ),
        ])?;
        Ok(changed.first() == Some(&1))
    }
    fn erased_persons_among(&self, persons: &[PersonKey]) -> StoreResult<Vec<bool>> {
        let keys: Vec<&[u8]> = persons.iter().map(|p| &p[..]).collect();
        let found = self.query(
            "SELECT person FROM erased_persons WHERE person = ANY($1::bytea[])",
            &[&keys],
        )?;
        let found: std::collections::HashSet<&[u8]> = found.iter().map(|r| r.get(0)).collect();
        Ok(keys.iter().map(|k| found.contains(k)).collect())
    }
    fn erased_points_among(&self, points: &[PointBytes]) -> StoreResult<Vec<bool>> {
        let keys = point_params(points);
        let found = self.query(
            "SELECT DISTINCT point FROM erased_points WHERE point = ANY($1::bytea[])",
            &[&keys],
        )?;
        let found: std::collections::HashSet<&[u8]> = found.iter().map(|r| r.get(0)).collect();
        Ok(keys.iter().map(|k| found.contains(k)).collect())
    }
    fn erasure_count(&self) -> StoreResult<u64> {
        self.count("SELECT count(*) FROM erased_persons", &[])
    }
}

impl AuditRepo for PgStore {
    fn last_audit(&self) -> StoreResult<Option<AuditEntry>> {
        self.record(
            "audit",
            "SELECT entry FROM audit ORDER BY seq DESC LIMIT 1",
            &[],
        )
    }
    fn put_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        self.execute(
            "INSERT INTO audit (seq, entry) VALUES ($1, $2)
             ON CONFLICT (seq) DO UPDATE SET entry = EXCLUDED.entry",
            &[&i64_of(e.seq), &json(e)?],
        )?;
        Ok(())
    }
    fn audit_after(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.records(
            "audit",
            "SELECT entry FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&i64_of(after), &limit],
        )
    }
}

impl BudgetRepo for PgStore {
    fn try_spend(
        &self,
        advertiser: &str,
        job: &str,
        now: u64,
        window_start: u64,
        cost_micro: u64,
        budget_micro: u64,
    ) -> StoreResult<Result<BudgetCharge, BudgetExhausted>> {
        self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            // The advertiser's row, locked: concurrent spends (from any
            // server) wait here and then see this one's charge.
            tx.execute(
                "INSERT INTO budget_advertisers (advertiser) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&advertiser],
            )
            .await
            .map_err(db_err)?;
            tx.execute(
                "SELECT 1 FROM budget_advertisers WHERE advertiser = $1 FOR UPDATE",
                &[&advertiser],
            )
            .await
            .map_err(db_err)?;
            let horizon = now.saturating_sub(BUDGET_HISTORY_SECS);
            tx.execute(
                "DELETE FROM budget_charges WHERE advertiser = $1 AND unix < $2",
                &[&advertiser, &i64_of(horizon)],
            )
            .await
            .map_err(db_err)?;
            let spent = spent_in(&*tx, advertiser, window_start).await?;
            let earlier = tx
                .query(
                    "SELECT micro FROM budget_charges WHERE advertiser = $1 AND job = $2",
                    &[&advertiser, &job],
                )
                .await
                .map_err(db_err)?;
            let outcome = if let Some(row) = earlier.first() {
                Ok(BudgetCharge {
                    charged_micro: u64_of(row.get(0)),
                    spent_micro: spent,
                })
            } else if spent.saturating_add(cost_micro) > budget_micro {
                Err(BudgetExhausted { spent_micro: spent })
            } else {
                tx.execute(
                    "INSERT INTO budget_charges (advertiser, job, unix, micro) VALUES ($1, $2, $3, $4)",
                    &[&advertiser, &job, &i64_of(now), &i64_of(cost_micro)],
                )
                .await
                .map_err(db_err)?;
                Ok(BudgetCharge {
                    charged_micro: cost_micro,
                    spent_micro: spent.saturating_add(cost_micro),
                })
            };
            tx.commit().await.map_err(db_err)?;
            Ok(outcome)
        })
    }

    fn budget_spent(&self, advertiser: &str, window_start: u64) -> StoreResult<u64> {
        self.run(async {
            let client = self.client().await?;
            spent_in(&**client, advertiser, window_start).await
        })
    }
}

/// The advertiser's charges since `window_start`, in micro-ε.
async fn spent_in<C: tokio_postgres::GenericClient>(
    client: &C,
    advertiser: &str,
    window_start: u64,
) -> StoreResult<u64> {
    let row = client
        .query_one(
            "SELECT COALESCE(sum(micro), 0)::bigint FROM budget_charges
             WHERE advertiser = $1 AND unix >= $2",
            &[&advertiser, &i64_of(window_start)],
        )
        .await
        .map_err(db_err)?;
    Ok(u64_of(row.get(0)))
}
