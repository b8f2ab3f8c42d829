//! The `onboard` command line. The doc comments are the help text.

use clap::{Args, Parser, Subcommand};
use onboard_protocol::{IdKind, Region};
use std::path::PathBuf;

/// onboard: turn CRM segments into DMP/DSP audiences without handing anyone
/// raw PII (double-blind ECDH matching).
#[derive(Debug, Parser)]
#[command(name = "onboard", version, propagate_version = true)]
pub struct Cli {
    /// Base URL of the onboard server: https, or plain http only to a loopback
    /// address (127.0.0.0/8, [::1], localhost); never user-info, query or fragment.
    #[arg(
        long,
        global = true,
        env = "ONBOARD_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    pub server: String,
    /// PEM file of the CA that signed the server's certificate (only it is trusted then).
    #[arg(long, global = true, env = "ONBOARD_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// File holding the API key (otherwise the ONBOARD_API_KEY environment variable);
    /// a regular file of yours, mode 0600, not a symlink.
    #[arg(long, global = true, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// No progress bars and no informational messages on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new advertiser secret key file (mode 0600; never overwrites).
    Keygen(KeygenArgs),
    /// Print each value normalised and its SHA-256, as the match would use it.
    Normalize(NormalizeArgs),
    /// Check a CRM export, then match it against the graph for a destination.
    Match(Box<MatchArgs>),
    /// Your match jobs (advertiser key).
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Audiences delivered to you (destination key).
    #[command(subcommand)]
    Audiences(AudiencesCommand),
    /// Push delivery to you: your webhook endpoint, deliveries, a reference receiver.
    #[command(subcommand)]
    Destination(PushCommand),
    /// Operator commands (admin key).
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// `onboard keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key (must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `onboard normalize`.
#[derive(Debug, Args)]
pub struct NormalizeArgs {
    /// Identifier kind: email, phone, maid, email_sha256 or phone_sha256.
    #[arg(long, value_parser = parse_kind)]
    pub kind: IdKind,
    /// Default region of phone numbers without a country code.
    #[arg(long, default_value = "FR", value_parser = parse_region, value_name = "CC")]
    pub region: Region,
    /// The values.
    #[arg(required = true, value_name = "VALUE")]
    pub values: Vec<String>,
}

/// `onboard match`.
#[derive(Debug, Args)]
pub struct MatchArgs {
    /// The CRM export: CSV (`,` `;` or tab; BOM, UTF-8 or Windows-1252), gzipped
    /// (`.csv.gz`) or not, or a spreadsheet (`.xlsx`, `.xlsm`, `.xlsb`, `.xls`, `.ods`).
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Read the CSV in this encoding (a WHATWG label: utf-8, windows-1252, latin1,
    /// utf-16le, …) instead of finding it out.
    #[arg(long, value_name = "NAME")]
    pub encoding: Option<String>,
    /// The sheet of a spreadsheet to read (default: the first).
    #[arg(long, value_name = "NAME")]
    pub sheet: Option<String>,
    /// Your secret key file (from `onboard keygen`): a regular file of yours, mode 0600, not a symlink.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Destination (DMP/DSP) the audiences are for.
    #[arg(long, value_name = "NAME")]
    pub destination: String,
    /// Column of email addresses (repeatable).
    #[arg(long = "email-col", value_name = "C")]
    pub email_cols: Vec<String>,
    /// Column of phone numbers (repeatable).
    #[arg(long = "phone-col", value_name = "C")]
    pub phone_cols: Vec<String>,
    /// Column of mobile ad IDs (repeatable).
    #[arg(long = "maid-col", value_name = "C")]
    pub maid_cols: Vec<String>,
    /// Column of SHA-256 hex of normalised emails (repeatable).
    #[arg(long = "email-sha256-col", value_name = "C")]
    pub email_sha256_cols: Vec<String>,
    /// Column of SHA-256 hex of normalised E.164 phones (repeatable).
    #[arg(long = "phone-sha256-col", value_name = "C")]
    pub phone_sha256_cols: Vec<String>,
    /// Column of segment names; several in one cell are separated by `|`.
    #[arg(long = "segment-col", value_name = "C")]
    pub segment_col: String,
    /// Column of consent (true/false, 1/0, yes/no, oui/non); rows without consent are dropped.
    #[arg(long = "consent-col", value_name = "C")]
    pub consent_col: Option<String>,
    /// Default region of phone numbers without a country code.
    #[arg(long, default_value = "FR", value_parser = parse_region, value_name = "CC")]
    pub region: Region,
    /// Only the data-quality report: nothing is sent.
    #[arg(long)]
    pub dry_run: bool,
    /// Create a separate audience for each segment instead of refreshing
    /// your live audience of the same segment at this destination.
    #[arg(long)]
    pub new_audience: bool,
    /// Print one JSON object (quality + report) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as one self-contained HTML page (no external
    /// resources; counts and line numbers, never a row's value).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Continue an interrupted job from its last acknowledged batch (same file and options).
    #[arg(long, value_name = "JOB_ID", conflicts_with = "dry_run")]
    pub resume: Option<String>,
    /// Records per uploaded batch.
    #[arg(long, default_value_t = crate::matching::DEFAULT_BATCH_SIZE, hide = true)]
    pub batch_size: usize,
}

/// `onboard jobs …`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List your jobs.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one job and its report.
    Show {
        /// Job ID.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Abort an open job (its uploads are deleted).
    Abort {
        /// Job ID.
        id: String,
    },
}

/// `onboard audiences …`.
#[derive(Debug, Subcommand)]
pub enum AudiencesCommand {
    /// List the audiences delivered to you.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download an audience: one cookie ID per line; with `--since V`, the
    /// cookie IDs added (`+id`) and removed (`-id`) since version V.
    Pull {
        /// Audience ID.
        id: String,
        /// Only the changes since this version of the audience (the server
        /// keeps those since the previous version).
        #[arg(long, value_name = "VERSION", value_parser = clap::value_parser!(u64).range(1..))]
        since: Option<u64>,
        /// Write to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Cookie IDs asked per page; at most the server's `members_page_limit`.
        #[arg(
            long,
            value_name = "N",
            default_value_t = crate::api::limits::MEMBERS_PAGE_LIMIT,
            value_parser = clap::value_parser!(u32).range(1..)
        )]
        page_size: u32,
    },
}

/// `onboard admin …`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Advertisers.
    #[command(subcommand)]
    Advertiser(AdvertiserCommand),
    /// Destinations (DMP/DSP).
    #[command(subcommand)]
    Destination(DestinationCommand),
    /// API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Principals (advertisers, destinations, admins).
    #[command(subcommand)]
    Principals(PrincipalsCommand),
    /// The identity graph.
    #[command(subcommand)]
    Graph(GraphCommand),
    /// Upload an opt-out list (`kind,value`): digests only.
    Optout {
        /// CSV with header `kind,value`.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Default region of phone numbers without a country code.
        #[arg(long, default_value = "FR", value_parser = parse_region, value_name = "CC")]
        region: Region,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Erase a person for good: from every graph version, every cache and
    /// audiences not yet pulled, leaving a tombstone that makes later imports
    /// skip the person (its ID and its identifiers).
    Erase {
        /// The onboarder's person ID.
        #[arg(long, value_name = "PERSON_ID")]
        person: String,
        /// Lift the person's tombstone instead, so a later import may bring
        /// the person back (audited).
        #[arg(long)]
        lift: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the audit log.
    Audit {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print server statistics.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `onboard admin advertiser …`.
#[derive(Debug, Subcommand)]
pub enum AdvertiserCommand {
    /// Create an advertiser; its API key is printed once, alone on the last line.
    Create {
        /// Advertiser name.
        name: String,
    },
}

/// `onboard admin destination …`.
#[derive(Debug, Subcommand)]
pub enum DestinationCommand {
    /// Create a destination; its API key is printed once, alone on the last line.
    Create {
        /// Destination name (as used in `match --destination` and cookies.csv).
        name: String,
        /// A URL recorded on the principal (https, or http to a loopback
        /// address); pushes go to the endpoint set with `admin destination
        /// webhook set` or `destination webhook set`.
        #[arg(long, value_name = "URL")]
        webhook_url: Option<String>,
    },
    /// A destination's push endpoint.
    #[command(subcommand)]
    Webhook(AdminWebhookCommand),
}

/// `onboard admin destination webhook …`.
#[derive(Debug, Subcommand)]
pub enum AdminWebhookCommand {
    /// Register or change a destination's endpoint; a new endpoint's signing
    /// secret is printed once, alone on the last line (hand it to the destination).
    Set {
        /// Destination name.
        name: String,
        /// The endpoint: https only.
        #[arg(long, value_name = "URL")]
        url: String,
        /// `notify` (events; the destination pulls) or `members` (events and the members pushed).
        #[arg(long, value_parser = ["notify", "members"])]
        mode: Option<String>,
    },
}

/// `onboard destination …` (destination key).
#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Your push endpoint.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Messages pushed to you: status, attempts, last HTTP status, next attempt.
    Deliveries {
        /// Most messages listed, newest first.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a message again now, with the same webhook-id.
    Redeliver {
        /// Message ID (`msg_…`).
        id: String,
    },
    /// Run the reference receiver: verify signatures and timestamps (401
    /// otherwise), deduplicate on webhook-id, write DIR/<audience id>.csv
    /// when an audience's last members page arrives.
    Listen(ListenArgs),
}

/// `onboard destination webhook …`.
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Register or change your endpoint; a new endpoint's signing secret is
    /// printed once, alone on the last line.
    Set {
        /// The endpoint: https only.
        #[arg(long, value_name = "URL")]
        url: String,
        /// `notify` (events; you pull) or `members` (events and the members pushed in pages).
        #[arg(long, value_parser = ["notify", "members"])]
        mode: Option<String>,
    },
    /// Show your endpoint (never its secrets).
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A new signing secret, printed once on the last line; the old one keeps
    /// signing beside it for 24 hours.
    RotateSecret,
    /// Remove your endpoint (pending messages fail).
    Remove,
}

/// `onboard destination listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// File with the signing secret(s), one `whsec_…` a line; mode 0600.
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    /// Directory for events.ndjson and the audiences' CSV files.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,
    /// TLS private key (PEM); mode 0600.
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,
    /// Accepted distance between a request's timestamp and now, in seconds.
    #[arg(long, default_value_t = onboard_protocol::webhook::DEFAULT_TOLERANCE_SECS, hide = true)]
    pub tolerance: u64,
}

/// `onboard admin keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an extra API key for a principal (rotation); printed alone on the last line.
    Create {
        /// Principal name.
        name: String,
    },
    /// Revoke one key by ID, or every key of a principal with --principal.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["key_id", "principal"])))]
    Revoke {
        /// Key ID.
        key_id: Option<String>,
        /// Revoke every key of this principal.
        #[arg(long, value_name = "NAME")]
        principal: Option<String>,
    },
}

/// `onboard admin principals …`.
#[derive(Debug, Subcommand)]
pub enum PrincipalsCommand {
    /// Create a principal of any role (admin included); its API key is printed once, alone on the last line.
    Create {
        /// Principal name.
        name: String,
        /// admin, advertiser or destination.
        #[arg(long, value_parser = parse_role)]
        role: crate::admin::Role,
        /// A URL recorded on a destination (https, or http to a loopback
        /// address); pushes go to the endpoint set with `admin destination
        /// webhook set` or `destination webhook set`.
        #[arg(long, value_name = "URL")]
        webhook_url: Option<String>,
    },
    /// List principals and their keys.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `onboard admin graph …`.
#[derive(Debug, Subcommand)]
pub enum GraphCommand {
    /// Import a new graph version; identifiers are normalised and hashed here, only digests are sent.
    /// With --delta the new version is the current one plus these rows, minus
    /// the persons of --remove-persons; only the new identifiers are blinded.
    Import {
        /// CSV with header `person_id,kind,value` (optional with --delta).
        #[arg(long, value_name = "FILE", required_unless_present = "delta")]
        identifiers: Option<PathBuf>,
        /// CSV with header `person_id,destination,cookie_id`.
        #[arg(long, value_name = "FILE")]
        cookies: Option<PathBuf>,
        /// Build the new version from the current one plus the changes.
        #[arg(long)]
        delta: bool,
        /// CSV with header `person_id`: persons whose identifiers and cookies
        /// the delta drops from the current version (rows added for them stay).
        #[arg(long, value_name = "FILE", requires = "delta")]
        remove_persons: Option<PathBuf>,
        /// Default region of phone numbers without a country code.
        #[arg(long, default_value = "FR", value_parser = parse_region, value_name = "CC")]
        region: Region,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the kept graph versions (newest first): counts, full or delta, who imported it.
    Versions {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a kept graph version current again (audited): a rollback, or forward again.
    Activate {
        /// The version, as `graph versions` lists it.
        #[arg(value_name = "VERSION")]
        number: u64,
    },
}

fn parse_region(s: &str) -> Result<Region, String> {
    s.parse()
        .map_err(|e: onboard_protocol::normalize::UnknownRegion| e.to_string())
}

fn parse_kind(s: &str) -> Result<IdKind, String> {
    s.parse()
        .map_err(|e: onboard_protocol::normalize::UnknownKind| e.to_string())
}

fn parse_role(s: &str) -> Result<crate::admin::Role, String> {
    s.parse()
}
