//! `onboard destination webhook|deliveries|redeliver|listen` and
//! `onboard admin destination webhook set`.

use super::{table, Context};
use crate::cli::{ListenArgs, PushCommand, WebhookCommand};
use crate::receiver::{self, ReceiverOptions};
use crate::webhooks::{self, WebhookInfo};
use anyhow::{Context as _, Result};

pub(super) fn run(ctx: &Context, cmd: PushCommand) -> Result<()> {
    if let PushCommand::Listen(args) = &cmd {
        return listen(ctx, args);
    }
    let api = ctx.api()?;
    match cmd {
        PushCommand::Webhook(WebhookCommand::Set { url, mode }) => {
            print_endpoint(&webhooks::set_webhook(&api, &url, mode.as_deref())?);
        }
        PushCommand::Webhook(WebhookCommand::Show { json }) => {
            let e = webhooks::show_webhook(&api)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print_endpoint(&e);
            }
        }
        PushCommand::Webhook(WebhookCommand::RotateSecret) => {
            print_endpoint(&webhooks::rotate_webhook_secret(&api)?);
        }
        PushCommand::Webhook(WebhookCommand::Remove) => {
            webhooks::remove_webhook(&api)?;
            println!("endpoint removed");
        }
        PushCommand::Deliveries { limit, json } => {
            let list = webhooks::deliveries(&api, limit)?;
            if json {
                let doc = serde_json::json!({ "deliveries": list });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else if list.is_empty() {
                ctx.note("no deliveries");
            } else {
                let text = |v: Option<String>| v.unwrap_or_default();
                let rows: Vec<Vec<String>> = list
                    .into_iter()
                    .map(|d| {
                        vec![
                            d.id,
                            d.event,
                            d.audience_id,
                            d.status,
                            d.attempts.to_string(),
                            text(d.last_status.map(|s| s.to_string()).or(d.last_error)),
                            text(d.next_attempt),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "id",
                            "event",
                            "audience",
                            "status",
                            "attempts",
                            "last",
                            "next attempt"
                        ],
                        &rows
                    )
                );
            }
        }
        PushCommand::Redeliver { id } => {
            let d = webhooks::redeliver(&api, &id)?;
            println!("{} queued again ({})", d.id, d.event);
        }
        PushCommand::Listen(_) => unreachable!("handled above"),
    }
    Ok(())
}

/// `onboard admin destination webhook set NAME --url … [--mode …]`.
pub(super) fn admin_set(ctx: &Context, name: &str, url: &str, mode: Option<&str>) -> Result<()> {
    let api = ctx.api()?;
    print_endpoint(&webhooks::admin_set_webhook(&api, name, url, mode)?);
    Ok(())
}

/// The endpoint, then a new secret alone on the last line.
fn print_endpoint(e: &WebhookInfo) {
    println!("destination: {}", e.destination);
    println!("url:         {}", e.url);
    println!("mode:        {}", e.mode);
    println!("status:      {}", e.status);
    for s in &e.secrets {
        match &s.expires {
            Some(t) => println!("secret:      made {}, signs until {t}", s.created),
            None => println!("secret:      made {}", s.created),
        }
    }
    if let Some(secret) = &e.secret {
        println!("signing secret (shown once; the receiver verifies with it):");
        println!("{secret}");
    }
}

fn listen(ctx: &Context, args: &ListenArgs) -> Result<()> {
    let secrets = receiver::read_secrets(&args.secret_file)?;
    let tls = receiver::tls_config(&args.tls_cert, &args.tls_key)?;
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let handle = receiver::start(
        ReceiverOptions {
            secrets,
            out_dir: args.out.clone(),
            tolerance_secs: args.tolerance,
        },
        listener,
        tls,
    )?;
    ctx.note(format!(
        "listening on https://{} — writing to {}",
        handle.addr,
        args.out.display()
    ));
    // Until interrupted (Ctrl-C or SIGTERM end the process).
    loop {
        std::thread::park();
    }
}
