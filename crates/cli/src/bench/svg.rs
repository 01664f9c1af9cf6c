//! The latency plot: one cumulative distribution per series on a logarithmic time axis, drawn
//! as plain SVG (no plotting library: one small function is cheaper than a dependency tree).

use std::fmt::Write as _;

/// One line of the plot: sorted samples in ms.
pub struct Series<'a> {
    pub label: String,
    pub color: &'a str,
    pub dashed: bool,
    pub samples: &'a [f64],
}

const W: f64 = 960.0;
const H: f64 = 540.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 300.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// 1-2-5 ticks covering [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= lo * 0.9999 && v <= hi * 1.0001 {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

fn tick_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", ms / 1000.0)
    } else if ms >= 1.0 {
        format!("{ms} ms")
    } else {
        format!("{} ms", (ms * 1000.0).round() / 1000.0)
    }
}

/// Nearest-rank percentile of sorted samples.
fn pct(s: &[f64], p: f64) -> f64 {
    s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

/// The plot; `marks` are vertical reference lines (value in ms, label).
pub fn cdf(title: &str, subtitle: &str, series: &[Series<'_>], marks: &[(f64, &str)]) -> String {
    let all = series
        .iter()
        .flat_map(|s| s.samples.iter().copied())
        .filter(|v| *v > 0.0);
    let (mut lo, mut hi) = all.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        (lo, hi) = (1.0, 1000.0);
    }
    for (v, _) in marks {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    // Below 0.1 ms is clock noise (a notification read together with the insert's reply).
    let lo = 10f64.powf(lo.max(0.1).log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    let decades = (hi.log10() - lo.log10()).round() as usize;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |ms: f64| LEFT + (ms.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()) * pw;
    let y = |q: f64| TOP + (1.0 - q) * ph;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(o, r##"<rect width="{W}" height="{H}" fill="white"/>"##);
    let _ = writeln!(
        o,
        r##"<text x="{LEFT}" y="22" font-size="16" font-weight="bold">{}</text>"##,
        esc(title)
    );
    let _ = writeln!(
        o,
        r##"<text x="{LEFT}" y="40" fill="#555">{}</text>"##,
        esc(subtitle)
    );
    for t in ticks(lo, hi) {
        let major = (t.log10() - t.log10().round()).abs() < 1e-9;
        // Over many decades only the powers of ten are labelled, or the labels collide.
        let label = if major || decades <= 3 {
            esc(&tick_label(t))
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="{2}"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle">{4}</text>"##,
            x(t),
            TOP + ph,
            if major { "#bbb" } else { "#e4e4e4" },
            TOP + ph + 16.0,
            label
        );
    }
    for i in 0..=10 {
        let q = i as f64 / 10.0;
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#e4e4e4"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}%</text>"##,
            y(q),
            LEFT + pw,
            LEFT - 6.0,
            y(q) + 4.0,
            i * 10
        );
    }
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">insert commit → embedding_ready received (log scale)</text>"##,
        LEFT + pw / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        o,
        r##"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">rows embedded within (cumulative)</text>"##,
        TOP + ph / 2.0
    );
    for (k, (v, label)) in marks.iter().enumerate() {
        let _ = writeln!(
            o,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#c00" stroke-dasharray="2 3"/><text x="{2:.1}" y="{3:.1}" fill="#c00" font-size="10">{4}</text>"##,
            x(*v),
            TOP + ph,
            x(*v) + 3.0,
            TOP + 12.0 + 13.0 * k as f64,
            esc(label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        if !s.samples.is_empty() {
            let n = s.samples.len() as f64;
            let mut pts = format!("{:.1},{:.1}", x(s.samples[0]), y(0.0));
            for (k, v) in s.samples.iter().enumerate() {
                let _ = write!(
                    pts,
                    " {:.1},{:.1} {:.1},{:.1}",
                    x(*v),
                    y(k as f64 / n),
                    x(*v),
                    y((k + 1) as f64 / n)
                );
            }
            let _ = writeln!(
                o,
                r##"<polyline points="{pts}" fill="none" stroke="{}" stroke-width="1.8"{}/>"##,
                s.color,
                if s.dashed {
                    r##" stroke-dasharray="6 3""##
                } else {
                    ""
                }
            );
        }
        let ly = TOP + 10.0 + i as f64 * 40.0;
        let lx = LEFT + pw + 16.0;
        let _ = writeln!(
            o,
            r##"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{}" stroke-width="3"{}/><text x="{:.1}" y="{:.1}">{}</text>"##,
            lx + 24.0,
            s.color,
            if s.dashed {
                r##" stroke-dasharray="6 3""##
            } else {
                ""
            },
            lx + 30.0,
            ly + 4.0,
            esc(&s.label)
        );
        let stats = if s.samples.is_empty() {
            "no samples".to_string()
        } else {
            format!(
                "n={}  P50 {:.1}  P99 {:.1}  max {:.1} ms",
                s.samples.len(),
                pct(s.samples, 0.5),
                pct(s.samples, 0.99),
                s.samples[s.samples.len() - 1]
            )
        };
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" fill="#555" font-size="10">{}</text>"##,
            lx + 30.0,
            ly + 18.0,
            esc(&stats)
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_1_2_5() {
        assert_eq!(
            ticks(1.0, 100.0),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
    }

    #[test]
    fn draws_a_closed_document() {
        let s = [1.0, 2.0, 3.0];
        let svg = cdf(
            "t <&>",
            "s",
            &[Series {
                label: "a".into(),
                color: "#000",
                dashed: false,
                samples: &s,
            }],
            &[(8.0, "P50 target")],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;&amp;&gt;"));
    }
}
