//! `GET /dashboard` opens in headless Chromium against a running server and draws its charts.

mod common;

use std::time::Duration;

use chromium_check::{Chromium, Pixels};
use common::{wait_for, Server};

#[test]
fn the_dashboard_draws_its_charts_in_chromium() {
    let profiles = std::env::temp_dir().join(format!("coinbit-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profiles);
    std::fs::create_dir_all(&profiles).unwrap();
    let chromium = Chromium::find(&profiles, (1280, 1600));
    let server = Server::start("glommio", &["--metrics-interval", "200", "--debug-routes"]);
    // Some traffic, slow and fast, and a few samples of history to draw.
    for i in 0..40 {
        let path = if i % 4 == 0 {
            "/debug/sleep?ms=20"
        } else {
            "/livez"
        };
        assert_eq!(server.operator_get(path).status, 200);
    }
    wait_for("a few samples", Duration::from_secs(20), || {
        let metrics = server.get("/api/enterprise/metrics").json();
        (metrics["monitoring"]["history"].as_array()?.len() >= 5).then_some(())
    });
    let page = server.get("/dashboard");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "the page must not load anything from elsewhere"
    );

    let url = format!("http://{}/dashboard", server.addr);
    let dom = chromium.dump_dom(&url, Some(5000));
    assert!(
        dom.contains("<title>coinbit dashboard (drawn)</title>"),
        "the charts were not drawn:\n{}",
        &dom[..dom.len().min(1500)]
    );
    assert!(dom.contains("data-drawn=\"true\""));
    assert!(dom.contains("<polyline"), "no chart line in the DOM");

    let png = profiles.join("dashboard.png");
    chromium.screenshot(&url, &png, Some(5000));
    let pixels = Pixels::read(&png);
    // Request rate and shard 0's CPU in #1f77b4, p99 and errors in #d62728, p50 and the score
    // in #2ca02c: each drawn as a line.
    for (name, rgb) in [
        ("blue", (0x1f, 0x77, 0xb4)),
        ("red", (0xd6, 0x27, 0x28)),
        ("green", (0x2c, 0xa0, 0x2c)),
    ] {
        let n = pixels.near(rgb);
        assert!(n > 200, "{name} chart pixels: {n}");
    }
    let non_white = pixels.non_white();
    assert!(non_white > 20_000, "the page is nearly blank: {non_white}");
}
