//! Test support shared by the server's and loadgen's page tests: finds Debian's `chromium`
//! (installed by `tests/run.sh`), opens a page headless, returns its DOM after the scripts ran,
//! takes a screenshot and counts the pixels of a colour in it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Headless Chromium with a profile directory of its own per call.
pub struct Chromium {
    bin: PathBuf,
    profiles: PathBuf,
    window: (u32, u32),
    calls: std::cell::Cell<u32>,
}

impl Chromium {
    /// The browser; a missing one fails the test that asked (`tests/run.sh` installs it), so a
    /// page test never passes without having opened its page.
    pub fn find(profiles: &Path, window: (u32, u32)) -> Chromium {
        let bin = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|name| {
                std::env::var_os("PATH")?
                    .to_str()?
                    .split(':')
                    .map(|d| Path::new(d).join(name))
                    .find(|p| p.is_file())
            })
            .expect(
                "chromium is not installed: tests/run.sh installs it (apt-get install -y chromium)",
            );
        Chromium {
            bin,
            profiles: profiles.to_path_buf(),
            window,
            calls: std::cell::Cell::new(0),
        }
    }

    fn command(&self, budget_ms: Option<u32>) -> Command {
        let call = self.calls.get();
        self.calls.set(call + 1);
        let mut c = Command::new(&self.bin);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--window-size={},{}", self.window.0, self.window.1))
        .arg(format!(
            "--user-data-dir={}",
            self.profiles.join(format!("profile-{call}")).display()
        ));
        // Lets a page's own timers and fetches run before the DOM or screenshot is taken.
        if let Some(ms) = budget_ms {
            c.arg(format!("--virtual-time-budget={ms}"));
        }
        c
    }

    /// The page's DOM once it has loaded (and `budget_ms` of its time has run).
    pub fn dump_dom(&self, url: &str, budget_ms: Option<u32>) -> String {
        let out = self
            .command(budget_ms)
            .arg("--dump-dom")
            .arg(url)
            .output()
            .expect("running chromium");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A PNG screenshot of the page at `png`; panics with Chromium's words if none was made.
    pub fn screenshot(&self, url: &str, png: &Path, budget_ms: Option<u32>) {
        let out = self
            .command(budget_ms)
            .arg(format!("--screenshot={}", png.display()))
            .arg(url)
            .output()
            .expect("running chromium");
        assert!(
            png.is_file(),
            "no screenshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The pixels of a PNG as RGB.
pub struct Pixels(Vec<[u8; 3]>);

impl Pixels {
    pub fn read(png_path: &Path) -> Pixels {
        let decoder = png::Decoder::new(std::fs::File::open(png_path).expect("the screenshot"));
        let mut reader = decoder.read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).expect("a PNG frame");
        let channels = info.color_type.samples();
        Pixels(
            buf[..info.buffer_size()]
                .chunks(channels)
                .map(|p| [p[0], p[1], p[2]])
                .collect(),
        )
    }

    /// Pixels within 40 of `rgb` on each channel (antialiasing blends the edges of a line).
    pub fn near(&self, rgb: (u8, u8, u8)) -> usize {
        let close = |a: u8, b: u8| (i32::from(a) - i32::from(b)).abs() < 40;
        self.0
            .iter()
            .filter(|p| close(p[0], rgb.0) && close(p[1], rgb.1) && close(p[2], rgb.2))
            .count()
    }

    /// Pixels that are not (nearly) white: how much of the page has anything drawn on it.
    pub fn non_white(&self) -> usize {
        self.0
            .iter()
            .filter(|p| p[0] < 240 || p[1] < 240 || p[2] < 240)
            .count()
    }
}
