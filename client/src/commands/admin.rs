//! `onboard admin …`: the operator's commands.

use super::{plain, table, Context};
use crate::admin::{self, Role};
use crate::cli::{
    AdminCommand, AdminWebhookCommand, AdvertiserCommand, DestinationCommand, GraphCommand,
    KeysCommand, PrincipalsCommand,
};
use crate::matching::RowIssue;
use anyhow::Result;
use std::collections::BTreeMap;

pub(super) fn run(ctx: &Context, cmd: AdminCommand) -> Result<()> {
    let api = ctx.api()?;
    match cmd {
        AdminCommand::Advertiser(AdvertiserCommand::Create { name }) => {
            let p = admin::create_principal(&api, &name, Role::Advertiser)?;
            print_new_key(
                &format!("created advertiser `{}`", p.name),
                &p.key_id,
                &p.api_key,
            );
        }
        AdminCommand::Destination(DestinationCommand::Create { name, webhook_url }) => {
            let p = admin::create_principal_with_webhook(
                &api,
                &name,
                Role::Destination,
                webhook_url.as_deref(),
            )?;
            print_new_key(
                &format!("created destination `{}`", p.name),
                &p.key_id,
                &p.api_key,
            );
        }
        AdminCommand::Destination(DestinationCommand::Webhook(AdminWebhookCommand::Set {
            name,
            url,
            mode,
        })) => super::destination::admin_set(ctx, &name, &url, mode.as_deref())?,
        AdminCommand::Keys(KeysCommand::Create { name }) => {
            let p = admin::create_key(&api, &name)?;
            print_new_key(
                &format!("created a new key for `{name}`"),
                &p.key_id,
                &p.api_key,
            );
        }
        AdminCommand::Keys(KeysCommand::Revoke { key_id, principal }) => {
            match (key_id, principal) {
                (_, Some(name)) => {
                    let n = admin::revoke_principal(&api, &name)?;
                    println!("revoked {n} key(s) of `{name}`");
                }
                (Some(id), None) => {
                    admin::revoke_key(&api, &id)?;
                    println!("revoked key {id}");
                }
                (None, None) => unreachable!("clap requires one of them"),
            }
        }
        AdminCommand::Principals(PrincipalsCommand::Create {
            name,
            role,
            webhook_url,
        }) => {
            let p =
                admin::create_principal_with_webhook(&api, &name, role, webhook_url.as_deref())?;
            print_new_key(
                &format!("created {role} `{}`", p.name),
                &p.key_id,
                &p.api_key,
            );
        }
        AdminCommand::Principals(PrincipalsCommand::List { json }) => {
            let list = admin::list_principals(&api)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "principals": list }))?
                );
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| {
                        let active = p
                            .keys
                            .iter()
                            .filter(|k| !k.revoked.as_bool().unwrap_or(false))
                            .count();
                        vec![
                            p.name.clone(),
                            p.role.clone(),
                            plain(&p.created),
                            format!("{active} active / {} total", p.keys.len()),
                            p.webhook_url.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["name", "role", "created", "keys", "webhook"], &rows)
                );
            }
        }
        AdminCommand::Graph(GraphCommand::Import {
            identifiers,
            cookies,
            delta,
            remove_persons,
            region,
            json,
        }) => {
            let files = admin::GraphFiles {
                identifiers: identifiers.as_deref(),
                cookies: cookies.as_deref(),
                remove_persons: remove_persons.as_deref(),
            };
            let s = if delta {
                admin::import_delta(&api, files, region, !ctx.quiet)?
            } else {
                let sink = crate::progress::Bars::new_sink(!ctx.quiet);
                admin::import_graph_with(&api, files, false, region, sink.as_ref())?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "import {}: graph version {} ({}) is now current: {} persons",
                    s.import_id,
                    s.version,
                    if s.delta { "delta" } else { "full" },
                    s.persons
                );
                println!("  rows added {}, rows removed {}", s.added, s.removed);
                println!(
                    "  identifier rows read {}, sent {} in {} batches",
                    s.identifier_rows, s.identifiers_sent, s.identifier_batches
                );
                if s.delta {
                    println!(
                        "  persons to remove sent {} in {} batches",
                        s.removals_sent, s.removal_batches
                    );
                    print_invalid("  skipped removal rows", &s.invalid_removals);
                }
                print_invalid("  skipped identifier rows", &s.invalid);
                println!(
                    "  cookies sent {} in {} batches",
                    s.cookies_sent, s.cookie_batches
                );
                print_invalid("  skipped cookie rows", &s.invalid_cookies);
                if s.skipped_erased > 0 {
                    println!("  rows of erased persons skipped: {}", s.skipped_erased);
                }
                for (k, n) in &s.identifiers {
                    println!("  identifiers, {k}: {n}");
                }
                for (d, n) in &s.cookies {
                    println!("  cookies, {d}: {n}");
                }
            }
        }
        AdminCommand::Graph(GraphCommand::Versions { json }) => {
            let versions = admin::graph_versions(&api)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&versions)?);
            } else {
                print_versions(&versions);
            }
        }
        AdminCommand::Graph(GraphCommand::Activate { number }) => {
            let persons = admin::activate_graph_version(&api, number)?;
            println!("graph version {number} is now current: {persons} persons");
        }
        AdminCommand::Optout { file, region, json } => {
            let s = admin::optout(&api, &file, region)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "opt-outs: {} rows read, {} accepted, {} persons suppressed",
                    s.rows, s.accepted, s.persons_suppressed
                );
                print_invalid("  skipped rows", &s.invalid);
            }
        }
        AdminCommand::Erase {
            person,
            lift: true,
            json,
        } => {
            let s = admin::lift_erasure(&api, &person)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("lifted the erasure of person {}", s.person);
            }
        }
        AdminCommand::Erase {
            person,
            lift: false,
            json,
        } => {
            let s = admin::erase(&api, &person)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "erased person {} ({} audiences updated)",
                    s.person, s.audiences_updated
                );
            }
        }
        AdminCommand::Audit { json } => {
            let entries = admin::audit(&api)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "entries": entries }))?
                );
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.seq.to_string(),
                            plain(&e.time),
                            e.actor.clone(),
                            e.action.clone(),
                            plain(&e.object),
                            plain(&e.outcome),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["seq", "time", "actor", "action", "object", "outcome"],
                        &rows
                    )
                );
            }
        }
        AdminCommand::Stats { json } => {
            let stats = admin::stats(&api)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print_flat("", &stats);
            }
        }
    }
    Ok(())
}

/// The new key is shown once, alone on the last line of stdout.
fn print_new_key(what: &str, key_id: &str, api_key: &str) {
    println!("{what} (key id {key_id})");
    println!("The API key below is shown only this once; store it now:");
    println!("{api_key}");
}

fn print_versions(versions: &[admin::GraphVersion]) {
    println!(
        "{:>8}  {:1}  {:5}  {:>6}  {:20}  {:>10}  {:>10}  {:>10}  {:14}  COUNTS",
        "VERSION", "", "MODE", "BASE", "COMMITTED", "PERSONS", "ADDED", "REMOVED", "IMPORTER"
    );
    for v in versions {
        let counts: Vec<String> = v
            .identifiers
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .chain(v.cookies.iter().map(|(d, n)| format!("cookies@{d} {n}")))
            .collect();
        println!(
            "{:>8}  {:1}  {:5}  {:>6}  {:20}  {:>10}  {:>10}  {:>10}  {:14}  {}",
            v.version,
            if v.current { "*" } else { "" },
            v.mode,
            v.base.map_or("-".into(), |b| b.to_string()),
            v.committed.as_deref().unwrap_or("-"),
            v.persons,
            v.added,
            v.removed,
            v.importer,
            counts.join(", ")
        );
    }
}

fn print_invalid(title: &str, invalid: &BTreeMap<String, RowIssue>) {
    for (code, issue) in invalid {
        let first: Vec<String> = issue.first_rows.iter().map(u64::to_string).collect();
        println!(
            "{title}, {code}: {} (line {})",
            issue.count,
            first.join(", ")
        );
    }
}

fn print_flat(prefix: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                print_flat(&key, v);
            }
        }
        other => println!("{prefix}: {}", plain(other)),
    }
}
