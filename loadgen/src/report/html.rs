//! `report.html`: one self-contained page (no network, no libraries) with the summary table,
//! a percentile plot in the style of HdrHistogram's plotter (latency against a log-scale
//! 1/(1-p) axis ticked at 90/99/99.9/99.99 %), and a throughput/latency timeline. When both
//! canvases are drawn the page sets its title to end in `(plotted)` and `body[data-plotted]`,
//! which the headless-browser test looks for.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{EndpointSummary, Summary};

/// One line of the percentile plot.
#[derive(Clone, Debug, Serialize)]
pub struct Curve {
    pub name: String,
    /// `[1/(1-p), milliseconds]` points, p < 1.
    pub points: Vec<[f64; 2]>,
}

/// The percentile curve of a histogram (HdrHistogram's percentile iteration, 5 ticks per half).
pub fn curve(name: &str, h: &Histogram<u64>) -> Curve {
    let mut points = Vec::new();
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            if q >= 1.0 {
                break;
            }
            points.push([1.0 / (1.0 - q), v.value_iterated_to() as f64 / 1e6]);
        }
    }
    Curve {
        name: name.into(),
        points,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn table_row(out: &mut String, e: &EndpointSummary) {
    let l = &e.latency_ms;
    let _ = writeln!(
        out,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
        esc(&e.name),
        esc(format!("{} {}", e.method, e.path).trim()),
        e.count,
        e.rps,
        e.errors,
        l.p50,
        l.p90,
        l.p99,
        l.p99_9,
        l.p99_99,
        l.max,
        l.mean,
        l.stdev
    );
}

/// Renders the page.
pub fn render(s: &Summary, curves: &[Curve]) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        curves: &'a [Curve],
        timeline: &'a [super::TimelinePoint],
    }
    let data = serde_json::to_string(&Data {
        curves,
        timeline: &s.timeline,
    })
    .unwrap_or_else(|_| "{}".into())
    .replace("</", "<\\/");
    let mut rows = String::new();
    for e in &s.endpoints {
        table_row(&mut rows, e);
    }
    table_row(&mut rows, &s.overall);
    let mut notes = String::new();
    for w in &s.warnings {
        let _ = writeln!(notes, "<li class=warn>warning: {}</li>", esc(w));
    }
    for v in &s.slo {
        let cls = if v.met { "ok" } else { "warn" };
        let verdict = if v.met { "met" } else { "MISSED" };
        let _ = writeln!(
            notes,
            "<li class={cls}>SLO {} {verdict} (observed {})</li>",
            esc(&v.objective),
            esc(&v.observed)
        );
    }
    let load = match s.peak_users {
        Some(u) => format!("closed model, {u} users"),
        None => format!(
            "open model, {:.1} req/s target",
            s.rate.target_rps.unwrap_or(0.0)
        ),
    };
    let head = format!(
        "{} &middot; {} &middot; {load} &middot; {} threads &middot; {:.1} s &middot; achieved {:.1} req/s &middot; connections {}/{}",
        esc(&s.target),
        esc(&s.scenario),
        s.threads,
        s.duration_s,
        s.rate.achieved_rps,
        s.connections.peak_open,
        s.connections.asked
    );
    PAGE.replace("{{HEAD}}", &head)
        .replace("{{ROWS}}", &rows)
        .replace("{{NOTES}}", &notes)
        .replace("{{DATA}}", &data)
}

const PAGE: &str = r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>loadgen report</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd}
td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}
.warn{color:#b00}.ok{color:#070}canvas{border:1px solid #ccc;display:block}
</style></head><body>
<h1>loadgen report</h1><div>{{HEAD}}</div>
<h2>Latency percentiles (ms, from the intended send time)</h2>
<table><tr><th>endpoint</th><th>request</th><th>count</th><th>req/s</th><th>errors</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>p99.99</th><th>max</th><th>mean</th><th>stdev</th></tr>
{{ROWS}}</table><ul>{{NOTES}}</ul>
<h2>Latency by percentile</h2><canvas id="pct" width="1100" height="420"></canvas>
<h2>Timeline</h2><canvas id="timeline" width="1100" height="320"></canvas>
<script type="application/json" id="data">{{DATA}}</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const COLORS = ["#1f77b4","#d62728","#2ca02c","#ff7f0e","#9467bd","#8c564b","#e377c2","#17becf","#bcbd22","#7f7f7f"];
function niceMax(v){ if(!(v>0)) return 1; const p=Math.pow(10,Math.floor(Math.log10(v))); for(const m of [1,2,2.5,5,10]){ if(m*p>=v) return m*p; } return 10*p; }
function frame(ctx,L,T,W,H){ ctx.strokeStyle="#888"; ctx.lineWidth=1; ctx.strokeRect(L,T,W,H); }
function drawPercentiles(){
  const c=document.getElementById("pct"), ctx=c.getContext("2d");
  const L=70,T=20,W=c.width-L-200,H=c.height-T-50;
  ctx.fillStyle="#fff"; ctx.fillRect(0,0,c.width,c.height);
  let maxX=100, maxY=0;
  for(const s of D.curves){ for(const p of s.points){ maxX=Math.max(maxX,p[0]); maxY=Math.max(maxY,p[1]); } }
  const decades=Math.max(2,Math.ceil(Math.log10(maxX))); maxY=niceMax(maxY*1.05);
  const X=x=>L+W*Math.log10(Math.max(1,x))/decades, Y=y=>T+H-H*y/maxY;
  ctx.font="12px sans-serif"; ctx.fillStyle="#333"; ctx.textAlign="center";
  const labels=["0%","90%","99%","99.9%","99.99%","99.999%","99.9999%","99.99999%"];
  for(let d=0; d<=decades; d++){ const x=X(Math.pow(10,d)); ctx.strokeStyle="#eee"; ctx.beginPath(); ctx.moveTo(x,T); ctx.lineTo(x,T+H); ctx.stroke(); ctx.fillText(labels[d]||("1e"+d),x,T+H+16); }
  ctx.fillText("percentile (log scale of 1/(1-p))",L+W/2,T+H+36);
  ctx.textAlign="right";
  for(let i=0;i<=5;i++){ const v=maxY*i/5, y=Y(v); ctx.strokeStyle="#eee"; ctx.beginPath(); ctx.moveTo(L,y); ctx.lineTo(L+W,y); ctx.stroke(); ctx.fillText(v.toPrecision(3),L-6,y+4); }
  ctx.save(); ctx.translate(16,T+H/2); ctx.rotate(-Math.PI/2); ctx.textAlign="center"; ctx.fillText("latency (ms)",0,0); ctx.restore();
  frame(ctx,L,T,W,H);
  D.curves.forEach((s,i)=>{
    ctx.strokeStyle=COLORS[i%COLORS.length]; ctx.lineWidth=i===0?3:2; ctx.beginPath();
    s.points.forEach((p,j)=>{ const x=X(p[0]), y=Y(p[1]); if(j===0) ctx.moveTo(x,y); else ctx.lineTo(x,y); });
    ctx.stroke();
    ctx.fillStyle=COLORS[i%COLORS.length]; ctx.fillRect(L+W+16,T+8+i*20,14,4); ctx.fillStyle="#333"; ctx.textAlign="left"; ctx.fillText(s.name,L+W+36,T+14+i*20);
  });
}
function drawTimeline(){
  const c=document.getElementById("timeline"), ctx=c.getContext("2d");
  const L=70,T=20,W=c.width-L-200,H=c.height-T-50, pts=D.timeline;
  ctx.fillStyle="#fff"; ctx.fillRect(0,0,c.width,c.height);
  let maxT=1,maxR=0,maxL=0;
  for(const p of pts){ maxT=Math.max(maxT,p.t+p.secs); maxR=Math.max(maxR,p.rps); maxL=Math.max(maxL,p.p99_ms); }
  maxR=niceMax(maxR*1.05); maxL=niceMax(maxL*1.05);
  const X=t=>L+W*t/maxT, YR=v=>T+H-H*v/maxR, YL=v=>T+H-H*v/maxL;
  ctx.font="12px sans-serif";
  for(const p of pts){ ctx.fillStyle="#c9d9ea"; const x0=X(p.t), x1=X(p.t+p.secs); ctx.fillRect(x0,YR(p.rps),Math.max(1,x1-x0-1),T+H-YR(p.rps)); if(p.errors>0){ ctx.fillStyle="#d62728"; ctx.fillRect(x0,T+H-4,Math.max(1,x1-x0-1),4);} }
  ctx.fillStyle="#333"; ctx.textAlign="right";
  for(let i=0;i<=4;i++){ const v=maxR*i/4; ctx.fillText(Math.round(v).toString(),L-6,YR(v)+4); const w=maxL*i/4; ctx.textAlign="left"; ctx.fillText(w.toPrecision(3)+" ms",L+W+6,YL(w)+4); ctx.textAlign="right"; }
  ctx.textAlign="center";
  for(let i=0;i<=10;i++){ const t=maxT*i/10; ctx.fillText(t.toFixed(t<10?1:0)+" s",X(t),T+H+16); }
  ctx.fillText("time since start",L+W/2,T+H+36);
  frame(ctx,L,T,W,H);
  for(const [key,color] of [["p50_ms","#2ca02c"],["p99_ms","#d62728"]]){
    ctx.strokeStyle=color; ctx.lineWidth=2; ctx.beginPath();
    pts.forEach((p,j)=>{ const x=X(p.t+p.secs/2), y=YL(p[key]); if(j===0) ctx.moveTo(x,y); else ctx.lineTo(x,y); });
    ctx.stroke();
  }
  ctx.textAlign="left";
  [["req/s","#c9d9ea"],["p50","#2ca02c"],["p99","#d62728"]].forEach(([n,col],i)=>{ ctx.fillStyle=col; ctx.fillRect(L+W+70,T+8+i*20,14,8); ctx.fillStyle="#333"; ctx.fillText(n,L+W+90,T+16+i*20); });
}
try { drawPercentiles(); drawTimeline(); document.title="loadgen report (plotted)"; document.body.dataset.plotted="true"; }
catch(e){ document.title="loadgen report (plot failed: "+e+")"; }
</script></body></html>
"##;
