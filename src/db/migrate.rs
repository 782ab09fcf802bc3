//! Schema migrations, embedded in the binary and applied to the primary in order, at start-up
//! and by `coinbit migrate`.
//!
//! All of them run in one transaction that first takes a transaction-scoped advisory lock:
//! servers starting at once queue on the lock, and each finds the versions the one before it
//! recorded (every statement under READ COMMITTED sees what committed before it began).

use std::time::Duration;

use postgres::{Config, NoTls};

use super::lsn::Lsn;
use super::pool::WAL_POSITION_SQL;

/// (version, name, SQL), in version order. A released migration is never edited: add one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "users", include_str!("migrations/0001_users.sql")),
    (
        2,
        "job_outbox",
        include_str!("migrations/0002_job_outbox.sql"),
    ),
    (
        3,
        "job_outbox_options",
        include_str!("migrations/0003_job_outbox_options.sql"),
    ),
    (4, "accounts", include_str!("migrations/0004_accounts.sql")),
    (5, "ledger", include_str!("migrations/0005_ledger.sql")),
    (
        6,
        "job_outbox_public_tag",
        include_str!("migrations/0006_job_outbox_public_tag.sql"),
    ),
    (
        7,
        "money_rules",
        include_str!("migrations/0007_money_rules.sql"),
    ),
    (8, "trading", include_str!("migrations/0008_trading.sql")),
    (
        9,
        "affiliates",
        include_str!("migrations/0009_affiliates.sql"),
    ),
    (
        10,
        "trading_closes",
        include_str!("migrations/0010_trading_closes.sql"),
    ),
    (
        11,
        "trading_reconcile",
        include_str!("migrations/0011_trading_reconcile.sql"),
    ),
    (
        12,
        "affiliate_dashboards",
        include_str!("migrations/0012_affiliate_dashboards.sql"),
    ),
    (
        13,
        "ledger_pending_in_mark",
        include_str!("migrations/0013_ledger_pending_in_mark.sql"),
    ),
];

/// The advisory lock's key: "coinbit" in ASCII.
const LOCK_KEY: i64 = 0x0063_6f69_6e62_6974;

/// What [`apply`] did.
#[derive(Debug)]
pub struct Migrated {
    /// The versions applied now.
    pub applied: Vec<i32>,
    /// The primary's WAL position once the schema was current (none on a standby): a replica
    /// that has not replayed it may lack tables, so reads leave it alone until it has.
    pub schema_position: Option<Lsn>,
}

/// Applies what is missing. Errors are ready to print.
pub fn apply(config: &Config, connect_timeout: Duration) -> Result<Migrated, String> {
    let mut config = config.clone();
    config
        .connect_timeout(connect_timeout)
        .application_name("coinbit-migrate");
    let (mut client, in_recovery) = greet(config, connect_timeout)?;
    if in_recovery {
        return check_standby(&mut client).map(|applied| Migrated {
            applied,
            schema_position: None,
        });
    }
    let mut tx = client.transaction().map_err(|e| describe(&e))?;
    let run = |tx: &mut postgres::Transaction<'_>| -> Result<Vec<i32>, postgres::Error> {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )?;
        let done: Vec<i32> = tx
            .query("SELECT version FROM schema_migrations", &[])?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )?;
            log::info!("database: applied migration {version} ({name})");
            applied.push(*version);
        }
        Ok(applied)
    };
    let applied = run(&mut tx).map_err(|e| describe(&e))?;
    tx.commit().map_err(|e| describe(&e))?;
    // Taken even when nothing was applied here: another server may have migrated a moment ago.
    let position: String = client
        .query_one(WAL_POSITION_SQL, &[])
        .map_err(|e| describe(&e))?
        .get(0);
    Ok(Migrated {
        applied,
        schema_position: Some(position.parse()?),
    })
}

/// Connects and asks whether the node is in recovery, within `2 * connect_timeout`: the
/// driver's timeout bounds only the TCP connect, and a node that accepts connections but never
/// answers (a hung server, a port held by something else) would hold start-up forever. On time
/// out the connecting thread is left behind; the caller exits.
pub(crate) fn greet(
    config: Config,
    connect_timeout: Duration,
) -> Result<(postgres::Client, bool), String> {
    let limit = connect_timeout * 2;
    let (answer, answered) = crossbeam::channel::bounded(1);
    std::thread::Builder::new()
        .name("db-migrate-connect".into())
        .spawn(move || {
            let greeting = config.connect(NoTls).and_then(|mut client| {
                let in_recovery: bool = client.query_one("SELECT pg_is_in_recovery()", &[])?.get(0);
                Ok((client, in_recovery))
            });
            let _ = answer.send(greeting.map_err(|e| describe(&e)));
        })
        .map_err(|e| format!("cannot start the connecting thread: {e}"))?;
    answered.recv_timeout(limit).unwrap_or_else(|_| {
        Err(format!(
            "no answer within {} ms: the server accepted the connection but did not answer",
            limit.as_millis()
        ))
    })
}

/// A "primary" in recovery takes no DDL: it may serve (reads; writes answer 503) only if its
/// schema is already current.
fn check_standby(client: &mut postgres::Client) -> Result<Vec<i32>, String> {
    let done: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .map(|rows| rows.iter().map(|row| row.get(0)).collect())
        .unwrap_or_default();
    let missing: Vec<i32> = MIGRATIONS
        .iter()
        .map(|m| m.0)
        .filter(|v| !done.contains(v))
        .collect();
    if missing.is_empty() {
        log::warn!("database: the primary is in recovery: it takes no writes until promoted");
        Ok(Vec::new())
    } else {
        Err(format!(
            "it is in recovery (a standby) and lacks migrations {missing:?}; point DATABASE_URL at the primary"
        ))
    }
}

/// A driver error in one line, with the server's own message when there is one.
pub(crate) fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// `coinbit migrate`: 0 when the schema is current, 1 when it cannot be made so, 2 without a
/// `DATABASE_URL`.
pub fn main(config: &crate::config::Config) -> i32 {
    let nodes = match config.database.nodes() {
        Ok(nodes) => nodes,
        Err(e) => {
            eprintln!("coinbit: {e}");
            return 2;
        }
    };
    let Some(primary) = nodes.first() else {
        eprintln!("coinbit migrate: DATABASE_URL is not set: nothing to migrate");
        return 2;
    };
    let timeout = Duration::from_millis(config.database.connect_timeout_ms);
    match apply(&primary.pg, timeout) {
        Ok(migrated) if migrated.applied.is_empty() => {
            println!(
                "schema is current (version {})",
                MIGRATIONS.last().map_or(0, |m| m.0)
            );
            0
        }
        Ok(migrated) => {
            println!("applied migrations {:?}", migrated.applied);
            0
        }
        Err(reason) => {
            eprintln!(
                "coinbit migrate: cannot migrate {}={}: {reason}",
                primary.variable, primary.display_url
            );
            1
        }
    }
}
