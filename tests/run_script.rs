//! tests/run.sh, the test command, with a stand-in `cargo` (and `chromium`, `apt-get`) first on
//! its PATH: a failing test binary does not stop the ones after it, the closing line counts
//! every binary, and the script exits non-zero.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_failing_binary_does_not_stop_the_others_and_the_run_fails() {
    let dir = std::env::temp_dir().join(format!("coinbit-run-sh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Like cargo: the first binary fails; the second runs only with --no-fail-fast.
    script(
        &dir,
        "cargo",
        r#"echo "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out"
case " $* " in
  *" --no-fail-fast "*) echo "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out" ;;
esac
exit 101"#,
    );
    script(&dir, "chromium", "exit 0");
    script(&dir, "apt-get", "exit 0");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/run.sh"))
        .env("PATH", path)
        .output()
        .expect("tests/run.sh runs");
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        !run.status.success(),
        "a failed binary must fail the run: {stdout}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("tests: 4 passed, 1 failed"),
        "{stdout}"
    );
}
