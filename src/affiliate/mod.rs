//! Affiliates: people who bring users and earn a share of the commission those users pay
//! (`DOMAIN.md`, "Affiliate rules"; schema `src/db/migrations/0009_affiliates.sql`).
//!
//! - A user applies and gets a code, `CBC` and six characters; an admin may make them
//!   `affiliate_vip` (a bigger share, in basis points).
//! - A referred user is attributed to one affiliate, within 48 h of signing up, once, never
//!   to themselves: the database refuses anything else (primary key, check, trigger).
//! - On each commission event ([`crate::ledger::commission::charge`]), the referrer's share
//!   (of the profit, at the affiliate's basis points, never above the commission) is a pending
//!   transfer from `affiliate_expense` to the affiliate's `commission` account in the charge's
//!   ledger group: platform (revenue less affiliate expense) + affiliate = commission, to the
//!   minor unit. A sweep posts it once the hold ends; a reversed commission voids it, or takes
//!   it back by a negative entry (what the balance cannot cover becomes debt).
//! - Available commission converts to admin credit at a bonus (one ledger group).
//!
//! # Layout
//! - [`rules`]: codes, tiers, shares, the conversion bonus (pure, table-tested).
//! - [`store`]: the SQL, on a connection inside one `db().write` (or `read`) closure.
//!
//! The HTTP side is `app::affiliate`.

pub mod rules;
pub mod store;

pub use rules::{Hold, Settings, Tier};
