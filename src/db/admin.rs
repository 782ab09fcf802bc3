//! One-off administration on the primary (`DATABASE_URL`), run as subcommands.
//!
//! `coinbit grant-role --email E --role R` gives a registered user a role: how the first
//! operator, manager or admin is made, so that a real staff session exists (the bootstrap
//! `OPERATOR_TOKEN` aside). A session already open picks the new role up within
//! `AUTH_CACHE_TTL`, when its shard looks it up again.

use std::time::Duration;

use crate::auth::role::Role;
use crate::config::Config;

const GRANT: &str = "UPDATE users SET role = $2 WHERE email = $1 RETURNING id";

/// `coinbit grant-role`: 0 when the user has the role now, 1 when there is no such user or the
/// database cannot say, 2 without a `DATABASE_URL`.
pub fn grant_role_main(config: &Config, email: &str, role: Role) -> i32 {
    let nodes = match config.database.nodes() {
        Ok(nodes) => nodes,
        Err(e) => {
            eprintln!("coinbit: {e}");
            return 2;
        }
    };
    let Some(primary) = nodes.first() else {
        eprintln!("coinbit grant-role: DATABASE_URL is not set: there are no users to change");
        return 2;
    };
    // Emails are kept as registration wrote them: trimmed, lower case.
    let email = email.trim().to_lowercase();
    let timeout = Duration::from_millis(config.database.connect_timeout_ms);
    let mut pg = primary.pg.clone();
    pg.application_name("coinbit-grant-role");
    let granted = super::migrate::greet(pg, timeout).and_then(|(mut client, in_recovery)| {
        if in_recovery {
            return Err("it is in recovery (a standby); point DATABASE_URL at the primary".into());
        }
        client
            .query_opt(GRANT, &[&email, &role_name(role)])
            .map(|row| row.map(|row| row.get::<_, i64>(0)))
            .map_err(|e| super::migrate::describe(&e))
    });
    match granted {
        Ok(Some(id)) => {
            println!(
                "user {id} ({email}) is now {}; open sessions see it within AUTH_CACHE_TTL",
                role_name(role)
            );
            0
        }
        Ok(None) => {
            eprintln!("coinbit grant-role: no user has the email {email:?}");
            1
        }
        Err(reason) => {
            eprintln!(
                "coinbit grant-role: cannot change {}={}: {reason}",
                primary.variable, primary.display_url
            );
            1
        }
    }
}

/// The role as the `users.role` column spells it.
fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Affiliate => "affiliate",
        Role::AffiliateVip => "affiliate_vip",
        Role::Operator => "operator",
        Role::Manager => "manager",
        Role::Admin => "admin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_parse_back() {
        for role in [
            Role::User,
            Role::Affiliate,
            Role::AffiliateVip,
            Role::Operator,
            Role::Manager,
            Role::Admin,
        ] {
            assert_eq!(Role::parse(role_name(role)), Some(role));
        }
    }
}
