//! The money: a double-entry ledger on PostgreSQL (`src/db/migrations/0005_ledger.sql`).
//!
//! Every movement is an immutable transfer of a positive amount (minor units, one currency)
//! from a debit account to a credit account; a pending transfer (a hold) is posted or voided
//! once. Each user has, per currency, a `real`, `admin_credit`, `commission` and `debt` account
//! whose balance is stored (a cache the check recomputes); the database refuses a user account
//! below zero. The platform's accounts (revenue, payment clearing, affiliate expense,
//! promotions, withdrawals in flight, fees) keep no stored balance: theirs is derived from the
//! transfers, so the hottest of them serialises nothing.
//!
//! # Layout
//! - [`rules`]: currencies, kinds and their sides, amounts, minimums, bonus, debt-first split,
//!   fees (pure, table-tested).
//! - [`store`]: the SQL: user accounts, transfers, holds with post and void, balances, a
//!   user's transfers by cursor, the check.
//! - [`idempotency`]: a money request's first outcome stored with its effect, replayed after.
//! - [`payment`]: the payment provider's webhook signature and events (pure).
//! - [`withdrawals`], [`coupons`], [`plans`], [`commission`]: the financial rules on the
//!   ledger, each its pure rules then its SQL; [`per_currency`]: a figure per currency.
//!
//! The HTTP side is `app::financial`: thin handlers that run these inside one
//! `db().write` closure each (one savepoint of a group commit: effect, transfers, outbox jobs
//! and idempotency record commit together or not at all).

pub mod commission;
pub mod coupons;
pub mod idempotency;
pub mod payment;
pub mod per_currency;
pub mod plans;
pub mod rules;
pub mod store;
pub mod withdrawals;

pub use idempotency::{Answer, Keyed, Outcome};
pub use rules::{Currency, Figures, Kind};
pub use store::{Account, Made, NewTransfer, Refused, UserAccounts};
