//! Writes the report files into `--out DIR`.

use std::path::Path;

use crate::error::Error;
use crate::report::{hgrm, html, Summary};
use crate::scenario::Scenario;
use crate::stats::EndpointStats;

use super::aggregate::Aggregator;

fn write(dir: &Path, name: &str, text: &str) -> Result<(), Error> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// `all.hgrm`, `<endpoint>.hgrm` (and `.uncorrected.hgrm` twins), `latency.hlog`,
/// `summary.json`, `report.html`.
pub fn write_all(
    dir: &Path,
    s: &Summary,
    agg: &Aggregator,
    all: &EndpointStats,
    sc: &Scenario,
) -> Result<(), Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let series = std::iter::once(("all", all)).chain(
        sc.endpoints
            .iter()
            .map(|e| e.name.as_str())
            .zip(&agg.totals),
    );
    let mut curves = Vec::new();
    for (name, stats) in series {
        write(
            dir,
            &format!("{name}.hgrm"),
            &hgrm::render(&stats.corrected),
        )?;
        write(
            dir,
            &format!("{name}.uncorrected.hgrm"),
            &hgrm::render(&stats.uncorrected),
        )?;
        curves.push(html::curve(name, &stats.corrected));
        if name == "all" && s.model == "open" {
            curves.push(html::curve("all (uncorrected)", &stats.uncorrected));
        }
    }
    write(dir, "latency.hlog", agg.log.as_str())?;
    let json = serde_json::to_string_pretty(s)
        .map_err(|e| Error::io("encoding summary.json", e.into()))?;
    write(dir, "summary.json", &json)?;
    write(dir, "report.html", &html::render(s, &curves))?;
    Ok(())
}
