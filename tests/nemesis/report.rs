//! The report a person reads at a glance: counts, anomalies with the operations
//! involved, and a picture of the run (throughput and latency over time, every fault a
//! shaded interval), as one self-contained HTML page.

use std::fmt::Write;

use crate::checker::Verdict;
use crate::history::{Op, Outcome};

/// A fault as it was injected: when it began, when it was over (the node back, the
/// partition mended), and what it was.
#[derive(Clone, Debug)]
pub struct Fault {
    pub start: f64,
    pub end: f64,
    pub what: String,
}

/// What a run was and what it found.
pub struct Run<'a> {
    pub title: String,
    pub seed: u64,
    /// The command that runs it again.
    pub replay: String,
    pub history: &'a [Op],
    pub faults: &'a [Fault],
    pub verdict: &'a Verdict,
    pub client_errors: usize,
    pub cluster_check: &'a Result<(), String>,
}

impl Run<'_> {
    /// The summary line: what CI logs and the README's table is made of.
    pub fn summary(&self) -> String {
        let ok = self.history.iter().filter(|o| o.ok().is_some()).count();
        let unknown = self.history.iter().filter(|o| o.is_unknown()).count();
        format!(
            "{} | seed {} | faults {} | operations {} ok {} unknown {} | client errors {} | not linearizable {} | lost {} | duplicated {} | partial txn {} | stale {} | undecided keys {} | cluster check {}",
            self.title,
            self.seed,
            self.faults.len(),
            self.history.len(),
            ok,
            unknown,
            self.client_errors,
            self.verdict.count("not linearizable"),
            self.verdict.lost,
            self.verdict.duplicated,
            self.verdict.count("partial transaction"),
            self.verdict.count("stale read"),
            self.verdict.keys_undecided,
            match self.cluster_check {
                Ok(()) => "clean".to_string(),
                Err(e) => format!("NOT clean: {e}"),
            }
        )
    }

    pub fn html(&self) -> String {
        let mut page = String::new();
        let _ = write!(
            page,
            "<!doctype html><meta charset=utf-8><title>{title}</title>\
             <style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}\
             table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}\
             .bad{{color:#b00;font-weight:bold}}.good{{color:#070;font-weight:bold}}code{{font-size:12px}}</style>\
             <h1>{title}</h1><p>seed <b>{seed}</b> &middot; replay with <code>{replay}</code></p>",
            title = escape(&self.title),
            seed = self.seed,
            replay = escape(&self.replay)
        );
        let pass = self.verdict.anomalies.is_empty()
            && self.client_errors == 0
            && self.cluster_check.is_ok();
        let _ = write!(
            page,
            "<p class={}>{}</p><p><code>{}</code></p>",
            if pass { "good" } else { "bad" },
            if pass { "PASS" } else { "ANOMALIES FOUND" },
            escape(&self.summary())
        );
        page.push_str(&self.chart());
        page.push_str("<h2>Faults</h2><table><tr><th>from</th><th>to</th><th>fault</th></tr>");
        for f in self.faults {
            let _ = write!(
                page,
                "<tr><td>{:.1}s</td><td>{:.1}s</td><td>{}</td></tr>",
                f.start,
                f.end,
                escape(&f.what)
            );
        }
        page.push_str("</table><h2>Anomalies</h2>");
        if self.verdict.anomalies.is_empty() {
            page.push_str("<p>none</p>");
        }
        for a in self.verdict.anomalies.iter().take(50) {
            let _ = write!(
                page,
                "<h3>{}: <code>{}</code></h3><p>{}</p><table><tr><th>client</th><th>call</th><th>start</th><th>end</th><th>outcome</th></tr>",
                a.kind,
                escape(&a.key),
                escape(&a.detail)
            );
            for op in a.ops.iter().take(400) {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{:?}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                    op.client,
                    op.call,
                    op.start,
                    op.end,
                    escape(&format!("{:?}", op.outcome))
                );
            }
            page.push_str("</table>");
        }
        let errors: Vec<&Op> = self.history.iter().filter(|o| o.blamed).collect();
        if !errors.is_empty() {
            page.push_str("<h2>Client errors</h2><table><tr><th>at</th><th>key</th><th>call</th><th>outcome</th></tr>");
            for op in errors.iter().take(100) {
                let _ = write!(
                    page,
                    "<tr><td>{:.3}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
                    op.end,
                    escape(&op.key),
                    op.call,
                    escape(&format!("{:?}", op.outcome))
                );
            }
            page.push_str("</table>");
        }
        page
    }

    /// Throughput (operations answered OK a second) and latency (the slowest and the
    /// median a second, log scale) over the run; faults shaded, errors and unknown
    /// outcomes marked along the bottom.
    fn chart(&self) -> String {
        let end = self
            .history
            .iter()
            .map(|o| o.end)
            .chain(self.faults.iter().map(|f| f.end))
            .fold(1.0f64, f64::max);
        let seconds = end.ceil() as usize + 1;
        let mut ok = vec![0u32; seconds];
        let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); seconds];
        let mut bad = vec![0u32; seconds];
        for op in self.history {
            let s = (op.end.max(0.0) as usize).min(seconds - 1);
            match op.outcome {
                Outcome::Ok(_) => {
                    ok[s] += 1;
                    latencies[s].push(op.end - op.start);
                }
                _ => bad[s] += 1,
            }
        }
        let (w, h, left, top) = (1100.0, 380.0, 60.0, 20.0);
        let (pw, ph) = (w - left - 60.0, h - top - 50.0);
        let x = |t: f64| left + t / seconds as f64 * pw;
        let top_ops = ok.iter().copied().max().unwrap_or(1).max(1) as f64;
        let y_ops = |n: f64| top + ph - n / top_ops * ph;
        // Latency from 0.1 ms to 30 s on a log scale.
        let y_lat = |l: f64| {
            let (lo, hi) = (1e-4f64.log10(), 30f64.log10());
            let v = l.max(1e-4).log10();
            top + ph - (v - lo) / (hi - lo) * ph
        };
        let mut svg = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' style='border:1px solid #ddd'>"
        );
        for f in self.faults {
            let hue = KINDS
                .iter()
                .find(|(word, _, _)| f.what.contains(word))
                .map_or(0, |(_, _, hue)| *hue);
            let _ = write!(
                svg,
                "<rect x='{:.1}' y='{top}' width='{:.1}' height='{ph}' fill='hsla({hue},70%,55%,0.2)'><title>{:.1}-{:.1}s {}</title></rect>",
                x(f.start),
                (x(f.end) - x(f.start)).max(1.5),
                f.start,
                f.end,
                escape(&f.what)
            );
        }
        let path = |points: Vec<(f64, f64)>| {
            points
                .iter()
                .enumerate()
                .map(|(i, (a, b))| format!("{}{a:.1},{b:.1}", if i == 0 { "M" } else { "L" }))
                .collect::<String>()
        };
        let throughput: Vec<(f64, f64)> = ok
            .iter()
            .enumerate()
            .map(|(s, &n)| (x(s as f64 + 0.5), y_ops(n as f64)))
            .collect();
        let mut worst = Vec::new();
        let mut median = Vec::new();
        for (s, l) in latencies.iter_mut().enumerate() {
            if l.is_empty() {
                continue;
            }
            l.sort_by(f64::total_cmp);
            worst.push((x(s as f64 + 0.5), y_lat(l[l.len() - 1])));
            median.push((x(s as f64 + 0.5), y_lat(l[l.len() / 2])));
        }
        let _ = write!(
            svg,
            "<path d='{}' fill='none' stroke='#1565c0' stroke-width='1.5'/>\
             <path d='{}' fill='none' stroke='#e65100' stroke-width='1'/>\
             <path d='{}' fill='none' stroke='#6a1b9a' stroke-width='1' stroke-dasharray='3,2'/>",
            path(throughput),
            path(worst),
            path(median)
        );
        for (s, &n) in bad.iter().enumerate() {
            if n > 0 {
                let _ = write!(
                    svg,
                    "<rect x='{:.1}' y='{:.1}' width='3' height='8' fill='#c00'><title>{s}s: {n} errors or unknown outcomes</title></rect>",
                    x(s as f64),
                    top + ph + 4.0
                );
            }
        }
        // Axes and labels.
        let _ = write!(
            svg,
            "<line x1='{left}' y1='{b}' x2='{r}' y2='{b}' stroke='#444'/>\
             <text x='{left}' y='{t}' font-size='11'>{seconds} s</text>\
             <text x='4' y='{top}' font-size='11' fill='#1565c0'>{top_ops:.0} ok/s</text>\
             <text x='{rl}' y='{y30}' font-size='11' fill='#e65100'>30 s</text>\
             <text x='{rl}' y='{y1}' font-size='11' fill='#e65100'>1 s</text>\
             <text x='{rl}' y='{y10m}' font-size='11' fill='#e65100'>10 ms</text>\
             <text x='{rl}' y='{y01}' font-size='11' fill='#e65100'>0.1 ms</text>\
             <text x='{left}' y='{legend}' font-size='12'><tspan fill='#1565c0'>&#9644; ok operations a second</tspan>  <tspan fill='#e65100'>&#9644; slowest latency</tspan>  <tspan fill='#6a1b9a'>&#9644; median latency</tspan>  <tspan fill='#c00'>&#9632; errors / unknown</tspan>  shaded:{kinds}</text></svg>",
            b = top + ph,
            r = left + pw,
            t = top + ph + 26.0,
            rl = left + pw + 4.0,
            y30 = y_lat(30.0),
            y1 = y_lat(1.0),
            y10m = y_lat(0.01),
            y01 = y_lat(1e-4),
            legend = h - 6.0,
            kinds = KINDS
                .iter()
                .map(|(_, name, hue)| format!(
                    " <tspan fill='hsl({hue},70%,45%)'>&#9632; {name}</tspan>"
                ))
                .collect::<String>()
        );
        svg
    }
}

/// Faults by kind: a word of their description, the legend's name, the hue they are
/// shaded in.
const KINDS: [(&str, &str, u32); 7] = [
    ("kill -9 of the proxy", "proxy killed", 0),
    ("kill -9", "node killed", 20),
    ("SIGSTOP", "node stopped", 45),
    ("FAILOVER", "failover", 200),
    ("migration", "migration", 120),
    ("partition", "partition", 280),
    ("SIGHUP", "reload", 330),
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}
