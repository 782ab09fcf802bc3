use super::*;

fn parse(args: &[&str]) -> Result<Cli, ConfigError> {
    let argv = std::iter::once("coinbit").chain(args.iter().copied());
    Cli::parse_from(argv, &[])
}

#[test]
fn defaults_are_the_seeds() {
    let cli = parse(&[]).unwrap();
    let c = &cli.config;
    assert_eq!(c.server.port, 3000);
    assert_eq!((c.cluster.min_workers, c.cluster.max_workers), (8, 32));
    assert_eq!(
        (c.cluster.scale_up_threshold, c.cluster.scale_down_threshold),
        (80, 30)
    );
    assert_eq!(
        (
            c.queues.high_workers,
            c.queues.medium_workers,
            c.queues.low_workers,
            c.queues.background_workers
        ),
        (4, 3, 2, 1)
    );
    let q = &c.queues;
    assert_eq!(
        (
            q.high_timeout_ms,
            q.medium_timeout_ms,
            q.low_timeout_ms,
            q.background_timeout_ms,
            q.max_size
        ),
        (5_000, 10_000, 30_000, 60_000, 10_000)
    );
    assert_eq!(c.database.replica_health_check_interval_ms, 15_000);
    assert_eq!(c.monitoring.alert_cooldown_ms, 300_000);
    assert_eq!(c.monitoring.metrics_interval_ms, 5_000);
    assert_eq!(
        (c.monitoring.cpu_warning, c.monitoring.cpu_critical),
        (70, 90)
    );
    assert_eq!(c.http.max_body_bytes, 1024 * 1024);
    assert_eq!(c.cluster.scale_cooldown_ms, 30_000);
    assert_eq!(c.monitoring.webhook_url, None);
}

#[test]
fn bad_values_name_the_setting_and_value() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--port", "http"], "--port", "http"),
        (
            &["--scale-up-threshold", "150"],
            "--scale-up-threshold",
            "150",
        ),
        (
            &["--min-workers", "40", "--max-workers", "10"],
            "CLUSTER_MIN_WORKERS",
            "40",
        ),
        (
            &["--scale-down-threshold", "90"],
            "SCALE_DOWN_THRESHOLD",
            "90",
        ),
        (&["--cpu-warning", "95"], "MONITORING_CPU_WARNING", "95"),
        (
            &["--database-url", "mysql://x"],
            "DATABASE_URL",
            "mysql://x",
        ),
        (&["--shard-cpus", "3-1"], "--shard-cpus", "3-1"),
        (&["--high-workers", "0"], "--high-workers", "0"),
        (&["--max-size", "0"], "--max-size", "0"),
        (
            &["--handoff-watermark", "101"],
            "--handoff-watermark",
            "101",
        ),
        (&["--max-attempts", "0"], "--max-attempts", "0"),
        (
            &["--route-classes", "livez=urgent"],
            "--route-classes",
            "livez=urgent",
        ),
        (
            &["--route-classes", "nope=high"],
            "--route-classes",
            "nope=high",
        ),
        (
            &["--retry-base-delay", "5000", "--retry-max-delay", "100"],
            "QUEUE_RETRY_BASE_DELAY",
            "5000",
        ),
        (
            &["--webhook-url", "https://alerts.example/hook"],
            "MONITORING_WEBHOOK_URL",
            "https://alerts.example/hook",
        ),
        (&["--history-length", "1"], "--history-length", "1"),
        (&["--trend-window", "0"], "--trend-window", "0"),
    ];
    for (args, name, value) in cases {
        let err = parse(args).expect_err(&format!("{args:?} should be refused"));
        let text = err.to_string();
        assert_eq!(err.exit_code(), 2, "{text}");
        assert!(
            text.contains(name) && text.contains(value),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn numbered_replicas_are_read_in_order_and_gaps_refused() {
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let ok = env(&[
        ("DB_READ_REPLICA_2", "postgres://b"),
        ("DB_READ_REPLICA_1", "postgres://a"),
    ]);
    let cli = Cli::parse_from(["coinbit", "--database-url", "postgres://p"], &ok).unwrap();
    assert_eq!(
        cli.config.database.read_replicas,
        vec!["postgres://a", "postgres://b"]
    );

    let gap = env(&[
        ("DB_READ_REPLICA_1", "postgres://a"),
        ("DB_READ_REPLICA_3", "postgres://c"),
    ]);
    let err = Cli::parse_from(["coinbit"], &gap).unwrap_err().to_string();
    assert!(err.contains("DB_READ_REPLICA_3"), "{err}");

    let bad = env(&[("DB_READ_REPLICA_x", "postgres://a")]);
    assert!(Cli::parse_from(["coinbit"], &bad).is_err());
}

#[test]
fn help_lists_every_variable() {
    let help = Cli::command().render_long_help().to_string();
    for arg in Cli::command().get_arguments() {
        if let Some(env) = arg.get_env() {
            assert!(help.contains(env.to_str().unwrap()), "--help lacks {env:?}");
        }
    }
    assert!(help.contains("DB_READ_REPLICA_1"));
}

#[test]
fn readme_configuration_table_matches_the_flags() {
    const START: &str = "<!-- configuration-table -->\n";
    const END: &str = "<!-- /configuration-table -->";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let (before, rest) = readme
        .split_once(START)
        .expect("README lacks the configuration table markers");
    let (table, after) = rest.split_once(END).expect("README lacks the end marker");
    let expected = configuration_table();
    if table != expected {
        if std::env::var_os("UPDATE_README").is_some() {
            std::fs::write(path, format!("{before}{START}{expected}{END}{after}")).unwrap();
            return;
        }
        panic!("README's configuration table is out of date; run `UPDATE_README=1 cargo test -p coinbit readme_configuration_table` to refresh it.\nExpected:\n{expected}");
    }
}

#[test]
fn sizes_counts_and_times_have_upper_bounds() {
    let u64_max = u64::MAX.to_string();
    // (variable, highest value accepted); set through its flag, which reads the same parser
    let cases: [(&str, u64); 16] = [
        ("MAX_REQUEST_LINE_BYTES", MAX_HEAD_LIMIT_BYTES),
        ("MAX_HEADER_BYTES", MAX_HEAD_LIMIT_BYTES),
        ("MAX_BODY_BYTES", MAX_BODY_LIMIT_BYTES),
        ("MAX_CONNECTIONS_PER_SHARD", MAX_COUNT),
        ("LISTEN_BACKLOG", 65_535),
        ("SHARDS", MAX_SHARDS),
        ("CLUSTER_MAX_WORKERS", MAX_SHARDS),
        ("QUEUE_MAX_SIZE", MAX_COUNT),
        ("QUEUE_HIGH_WORKERS", MAX_COUNT),
        ("DB_QUEUE_SIZE", MAX_COUNT),
        ("DB_BREAKER_FAILURES", MAX_COUNT),
        ("MONITORING_QUEUE_SIZE_CRITICAL", MAX_COUNT),
        ("KEEP_ALIVE_TIMEOUT", MAX_MILLIS),
        ("DURABLE_JOBS_POLL_INTERVAL", MAX_MILLIS),
        ("DRAIN_DELAY", MAX_MILLIS),
        ("AGENT_PORT", 65_535),
    ];
    let command = Cli::command();
    let flag_of = |name: &str| -> String {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name))
            .unwrap_or_else(|| panic!("no flag reads {name}"));
        format!("--{}", arg.get_long().unwrap())
    };
    for (name, highest) in cases {
        let flag = flag_of(name);
        let at = highest.to_string();
        assert!(parse(&[&flag, &at]).is_ok(), "{flag} {at} refused");
        for over in [(highest + 1).to_string(), u64_max.clone()] {
            let err = parse(&[&flag, &over]).unwrap_err();
            let text = err.to_string();
            assert_eq!(err.exit_code(), 2, "{text}");
            assert!(text.contains(&flag) && text.contains(&over), "{text}");
        }
    }
}

#[test]
fn an_instance_id_is_a_host_name_and_defaults_to_this_one() {
    for good in ["api-1", "node.eu_west", &"x".repeat(63)] {
        let cli = parse(&["--instance-id", good]).unwrap();
        assert_eq!(cli.config.instance_id(), good);
    }
    for bad in ["", "a/b", "two words", &"x".repeat(64)] {
        let err = parse(&["--instance-id", bad]).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
    }
    let default = parse(&[]).unwrap().config.instance_id();
    assert!(instance_id(&default).is_ok(), "{default:?}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if instance_id(host.trim()).is_ok() {
        assert_eq!(default, host.trim());
    }
}

#[test]
fn secrets_key_is_checked_and_never_echoed() {
    let key = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let cli = parse(&["--secrets-key", key]).unwrap();
    let sealed_with = cli.config.auth.secrets_key(false).unwrap().unwrap();
    assert_eq!(sealed_with.version, 1);
    assert!(!format!("{:?}", cli.config).contains("0a0b0c"));
    // Unset: no key in production (API keys off), the public development key with debug routes.
    assert_eq!(
        parse(&[]).unwrap().config.auth.secrets_key(false).unwrap(),
        None
    );
    let debug = parse(&["--debug-routes"]).unwrap();
    assert_eq!(
        debug.config.auth.secrets_key(true).unwrap(),
        Some(crate::auth::secrets::SecretsKey::development())
    );
    for bad in [
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        "1:0a0b0c",
        "0:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    ] {
        let error = parse(&["--secrets-key", bad]).unwrap_err();
        let text = error.to_string();
        assert_eq!(error.exit_code(), 2, "{text}");
        assert!(text.contains("SECRETS_KEY"), "{text}");
        assert!(!text.contains("0a0b0c"), "echoes the key: {text}");
    }
}

#[test]
fn auth_defaults() {
    let auth = parse(&[]).unwrap().config.auth;
    assert_eq!(auth.session_ttl_ms, 86_400_000);
    assert_eq!(auth.auth_cache_ttl_ms, 2_000);
    assert_eq!(
        (auth.password_hash_threads, auth.password_hash_queue),
        (2, 64)
    );
    assert_eq!(
        (auth.login_max_failures, auth.login_lockout_window_ms),
        (5, 900_000)
    );
    assert!(parse(&["--password-hash-threads", "0"]).is_err());
}

#[test]
fn operator_token_and_metrics_access() {
    let token = "s3cret-operator-token-0123456789abcdef";
    let cli = parse(&["--operator-token", token]).unwrap();
    let parsed = cli.config.auth.operator_token().unwrap().unwrap();
    assert!(parsed.matches(format!("Bearer {token}").as_bytes()));
    assert!(!format!("{:?}", cli.config).contains("s3cret"));
    let defaults = parse(&[]).unwrap().config.auth;
    assert_eq!(defaults.operator_token().unwrap(), None);
    assert_eq!(defaults.metrics_access, super::MetricsAccess::Open);
    let locked = parse(&["--metrics-access", "operator"])
        .unwrap()
        .config
        .auth;
    assert_eq!(locked.metrics_access, super::MetricsAccess::Operator);
    assert!(parse(&["--metrics-access", "closed"]).is_err());
    for bad in ["s3cret-too-short", "s3cret with spaces 0123456789abcdef"] {
        let error = parse(&["--operator-token", bad]).unwrap_err();
        let text = error.to_string();
        assert_eq!(error.exit_code(), 2, "{text}");
        assert!(text.contains("OPERATOR_TOKEN"), "{text}");
        assert!(!text.contains("s3cret"), "echoes the token: {text}");
    }
}
