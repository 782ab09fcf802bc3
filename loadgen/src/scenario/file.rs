//! The user scenario file, TOML or JSON (chosen by extension; `.json` is JSON, anything else TOML).
//!
//! ```toml
//! user_ids = 50000                      # range of {{user_id}}
//! headers = { authorization = "Bearer test" }   # sent with every request
//!
//! [[requests]]
//! name = "balance"                      # report name (default: METHOD path)
//! method = "GET"                        # default GET
//! path = "/api/users/{{user_id}}/balance"
//! weight = 3                            # default 1
//! expect = 200                          # or [200, 404]; default: any 2xx
//!
//! [[requests]]
//! method = "POST"
//! path = "/api/orders"
//! headers = { content-type = "application/json" }
//! body = '{"user":{{user_id}},"qty":{{rand:1:10}}}'
//!
//! [login]                               # optional: an account per virtual user (crate::login)
//! credentials = "session"               # or "api_key" (signed requests)
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileScenario {
    pub name: Option<String>,
    pub user_ids: Option<u64>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub requests: Vec<FileRequest>,
    /// Log each virtual user in (see [`crate::login`]).
    pub login: Option<crate::login::LoginSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRequest {
    pub name: Option<String>,
    pub method: Option<String>,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub weight: Option<u32>,
    pub expect: Option<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Expect {
    One(u16),
    Many(Vec<u16>),
}

impl Expect {
    pub fn into_vec(self) -> Vec<u16> {
        match self {
            Expect::One(s) => vec![s],
            Expect::Many(v) => v,
        }
    }
}

/// Parses a scenario file's text; `json` picks the format.
pub fn parse(text: &str, json: bool) -> Result<FileScenario, String> {
    if json {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}
