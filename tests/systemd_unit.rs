//! Offline checks of `systemd/hookgate.service`.
//!
//! No running systemd is needed: `systemd-analyze verify` and
//! `systemd-analyze security --offline=true` only parse the unit file. When
//! `systemd-analyze` is not installed the systemd tests print a skip note and
//! pass, except under `CI=true`, where a missing tool is a failure so the
//! check cannot silently disappear from `.ci/run`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The unit as shipped in the repository.
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/hookgate.service");
/// The example configuration the install guide copies to /etc/hookgate.
const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
/// Where the unit expects the binary; replaced by the test build's binary
/// because `systemd-analyze verify` fails on Exec*= commands that don't exist.
const INSTALLED_BIN: &str = "/usr/local/bin/hookgate";
/// Highest acceptable `systemd-analyze security` exposure (0.0 best, 10.0 worst).
const MAX_EXPOSURE: f64 = 2.0;

/// Whether the systemd tests should run. `false` (after printing why) when
/// `systemd-analyze` is missing outside CI; panics when it is missing and
/// `CI=true`.
fn systemd_analyze_available(test: &str) -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: systemd-analyze not found but CI=true; install systemd (Debian: apt-get install systemd)");
    }
    eprintln!("SKIP {test}: systemd-analyze not found (install systemd to run it; with CI=true this is a failure)");
    false
}

/// Writes the repository unit into a fresh temp dir as `hookgate.service`,
/// with every `/usr/local/bin/hookgate` replaced by this build's binary, and
/// `extra` inserted at the end of the `[Service]` section.
fn staged_unit(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let text = fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("reading {UNIT}: {e}"));
    // ExecStartPre=, ExecStart= and two ExecReload= lines (check, kill): the
    // first three name the binary.
    assert_eq!(
        text.matches(INSTALLED_BIN).count(),
        3,
        "expected ExecStartPre=, ExecStart= and ExecReload= to run {INSTALLED_BIN}"
    );
    let bin = env!("CARGO_BIN_EXE_hookgate");
    // systemd splits command lines on whitespace unless the word is quoted.
    let bin = if bin.contains(char::is_whitespace) {
        format!("\"{bin}\"")
    } else {
        bin.to_string()
    };
    let mut text = text.replace(INSTALLED_BIN, &bin);
    if !extra.is_empty() {
        let at = text
            .find("\n[Install]")
            .expect("unit has an [Install] section");
        text.insert_str(at, &format!("\n{extra}\n"));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // The file name is the unit name, so keep it.
    let path = dir.path().join("hookgate.service");
    fs::write(&path, text).expect("write staged unit");
    (dir, path)
}

/// Runs `systemd-analyze <args> <unit>` with colours and the pager off.
fn systemd_analyze(args: &[&str], unit: &Path) -> Output {
    Command::new("systemd-analyze")
        .arg("--no-pager")
        .args(args)
        .arg(unit)
        .env("SYSTEMD_COLORS", "0")
        .output()
        .expect("run systemd-analyze")
}

/// Demonstrates that the shipped unit is clean as systemd parses it: every
/// key is known, every value parses and every Exec*= binary exists. systemd
/// 252 exits 0 even for unknown keys or unparsable values, so the signal is
/// stderr, which must be empty (no noise has been seen from this command on
/// Debian 12, root or not, so nothing is filtered).
#[test]
fn unit_passes_systemd_analyze_verify() {
    if !systemd_analyze_available("unit_passes_systemd_analyze_verify") {
        return;
    }
    let (_dir, unit) = staged_unit("");
    let out = systemd_analyze(&["verify", "--man=no"], &unit);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify printed on stderr (status {}):\n{stderr}",
        out.status
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        out.status
    );
}

/// Demonstrates that the verify check above can fail: the same staged unit
/// with an unknown key gets a complaint on stderr (while the exit status
/// stays 0 on systemd 252). Without this, an empty stderr could also mean
/// that systemd-analyze never looked at the file.
#[test]
fn verify_reports_a_bad_key_on_stderr() {
    if !systemd_analyze_available("verify_reports_a_bad_key_on_stderr") {
        return;
    }
    let (_dir, unit) = staged_unit("HookgateNoSuchKey=yes");
    let out = systemd_analyze(&["verify", "--man=no"], &unit);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HookgateNoSuchKey"),
        "expected a complaint about the unknown key, got status {} and stderr:\n{stderr}",
        out.status
    );
}

/// Demonstrates that the unit's sandbox is tight: the overall exposure that
/// `systemd-analyze security --offline=true` computes (0.0 = fully locked
/// down, 10.0 = unprotected) is at most 2.0. The score is printed so the
/// test log records it.
#[test]
fn unit_security_exposure_is_at_most_2() {
    if !systemd_analyze_available("unit_security_exposure_is_at_most_2") {
        return;
    }
    let (_dir, unit) = staged_unit("");
    let out = systemd_analyze(&["security", "--offline=true"], &unit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze security failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // "→ Overall exposure level for hookgate.service: 1.4 OK 🙂"
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no 'Overall exposure level' line in:\n{stdout}\n{stderr}"));
    let score: f64 = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the exposure from {line:?}"));
    println!(
        "systemd-analyze security --offline=true: exposure {score:.1} (limit {MAX_EXPOSURE:.1})"
    );
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}; items still exposed:\n{}",
        stdout
            .lines()
            .filter(|l| l.starts_with('✗'))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Demonstrates that the unit's limits fit the example configuration, with
/// no systemd needed: `TimeoutStopSec=` is longer than
/// `server.shutdown_timeout` (or systemd would SIGKILL hookgate mid-drain),
/// and `LimitNOFILE=` is at least twice `limits.max_connections` (a client
/// and an upstream descriptor per connection).
#[test]
fn unit_limits_cover_the_example_config() {
    let unit = fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("reading {UNIT}: {e}"));
    let config = fs::read_to_string(EXAMPLE_CONFIG)
        .unwrap_or_else(|e| panic!("reading {EXAMPLE_CONFIG}: {e}"));

    let stop = parse_duration(setting(&unit, "TimeoutStopSec", '=').trim_matches('"'));
    let drain = parse_duration(setting(&config, "shutdown_timeout", '=').trim_matches('"'));
    assert!(
        stop > drain,
        "TimeoutStopSec ({stop:?}) must exceed shutdown_timeout ({drain:?})"
    );

    let nofile: u64 = setting(&unit, "LimitNOFILE", '=')
        .parse()
        .expect("LimitNOFILE is a number");
    let max_connections: u64 = setting(&config, "max_connections", '=')
        .parse()
        .expect("max_connections is a number");
    assert!(
        nofile >= 2 * max_connections,
        "LimitNOFILE={nofile} < 2 x max_connections ({max_connections})"
    );
}

/// The value of the first uncommented `key = value` / `Key=value` line, with
/// any trailing `# comment` removed.
fn setting<'a>(text: &'a str, key: &str, sep: char) -> &'a str {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(sep))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.split('#').next().unwrap_or("").trim())
        .unwrap_or_else(|| panic!("no `{key}` setting found"))
}

/// Parses the duration forms used in the unit and the config: `45s`,
/// `500ms`, `1m`/`1min`, or a bare number of seconds.
fn parse_duration(s: &str) -> Duration {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("bad duration {s:?}"));
    match unit.trim() {
        "" | "s" | "sec" => Duration::from_secs(n),
        "ms" | "msec" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n * 60),
        other => panic!("unsupported duration unit {other:?} in {s:?}"),
    }
}
