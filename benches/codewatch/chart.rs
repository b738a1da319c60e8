//! The benchmark's chart: for every path with a baseline, its throughput and its CPU per unit as a
//! multiple of the baseline's (1.0 = the baseline), as an SVG with no dependencies.

use crate::Row;

const WIDTH: f64 = 980.0;
const LABEL: f64 = 430.0;
const ROW: f64 = 34.0;
/// The scale's right end, as a multiple of the baseline.
const MAX_RATIO: f64 = 3.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG of every row compared with a baseline: a blue bar for throughput, an orange one for CPU
/// per unit, both as multiples of the baseline's, with the baseline's line at 1.0.
pub fn svg(rows: &[Row], machine: &str) -> String {
    let compared: Vec<&Row> = rows.iter().filter(|r| r.rate_ratio.is_some()).collect();
    let height = 70.0 + ROW * compared.len() as f64 + 30.0;
    let x = |ratio: f64| LABEL + (ratio.min(MAX_RATIO) / MAX_RATIO) * (WIDTH - LABEL - 20.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"15\">codewatch against its baselines, same run \
         (1.0 = the baseline)</text>\n\
         <text x=\"10\" y=\"38\" fill=\"#555\">{}</text>\n\
         <rect x=\"{LABEL}\" y=\"46\" width=\"12\" height=\"10\" fill=\"#3b7dd8\"/>\
         <text x=\"{}\" y=\"55\">throughput × baseline</text>\n\
         <rect x=\"{}\" y=\"46\" width=\"12\" height=\"10\" fill=\"#e8833a\"/>\
         <text x=\"{}\" y=\"55\">CPU per unit × baseline</text>\n",
        escape(machine),
        LABEL + 16.0,
        LABEL + 180.0,
        LABEL + 196.0,
    );
    for (i, row) in compared.iter().enumerate() {
        let y = 70.0 + ROW * i as f64;
        out += &format!(
            "<text x=\"10\" y=\"{}\">{}</text>\n",
            y + 16.0,
            escape(&format!("{}: {}", row.part, row.case))
        );
        for (j, (ratio, colour)) in [(row.rate_ratio, "#3b7dd8"), (row.cpu_ratio, "#e8833a")]
            .into_iter()
            .enumerate()
        {
            if let Some(ratio) = ratio {
                let top = y + 3.0 + 13.0 * j as f64;
                out += &format!(
                    "<rect x=\"{LABEL}\" y=\"{top}\" width=\"{:.1}\" height=\"11\" fill=\"{colour}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{ratio:.2}</text>\n",
                    x(ratio) - LABEL,
                    x(ratio) + 4.0,
                    top + 9.5
                );
            }
        }
    }
    let bottom = 70.0 + ROW * compared.len() as f64;
    for tick in [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0] {
        let colour = if tick == 1.0 { "#000" } else { "#ccc" };
        out += &format!(
            "<line x1=\"{0:.1}\" y1=\"64\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"{colour}\"/>\
             <text x=\"{0:.1}\" y=\"{1}\" text-anchor=\"middle\" fill=\"#555\">{tick:.1}</text>\n",
            x(tick),
            bottom + 16.0
        );
    }
    out + "</svg>\n"
}

/// Series colours of the growth chart, in the order the series first appear.
const SERIES: [&str; 5] = ["#3b7dd8", "#e8833a", "#3a9e5c", "#9b59b6", "#c0392b"];

/// An SVG of each path's CPU per unit against the number of valid codes in the table before the
/// run (log scale), as a multiple of its CPU at the smallest size, with the ±15 % band of the
/// target shaded; each point labelled with its µs (the smallest size's in the legend). `None`
/// without at least two sizes.
pub fn growth_svg(rows: &[Row], machine: &str) -> Option<String> {
    let mut series: Vec<(&str, Vec<(usize, f64)>)> = Vec::new();
    for row in rows {
        let (Some((name, size)), Some(cpu)) = (row.growth, row.cpu_us) else {
            continue;
        };
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push((size, cpu)),
            None => series.push((name, vec![(size, cpu)])),
        }
    }
    let sizes: Vec<usize> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(s, _)| *s))
        .collect();
    let (low, high) = (*sizes.iter().min()?, *sizes.iter().max()?);
    if low == high {
        return None;
    }
    let (left, right, top, bottom) = (70.0, WIDTH - 300.0, 60.0, 380.0);
    let (min_ratio, max_ratio) = (0.5, 2.0);
    let x = |size: usize| {
        let span = (high as f64).log10() - (low as f64).log10();
        left + ((size as f64).log10() - (low as f64).log10()) / span * (right - left)
    };
    let y = |ratio: f64| {
        let ratio = ratio.clamp(min_ratio, max_ratio);
        bottom - (ratio - min_ratio) / (max_ratio - min_ratio) * (bottom - top)
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"15\">CPU per unit against the table's size \
         (1.0 = at {low} rows; shaded: the ±15 % target)</text>\n\
         <text x=\"10\" y=\"38\" fill=\"#555\">{}</text>\n\
         <rect x=\"{left}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#e8f4e8\"/>\n",
        bottom + 50.0,
        escape(machine),
        y(1.15),
        right - left,
        y(0.85) - y(1.15),
    );
    for tick in [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0] {
        let colour = if tick == 1.0 { "#000" } else { "#ddd" };
        out += &format!(
            "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{right}\" y2=\"{0:.1}\" stroke=\"{colour}\"/>\
             <text x=\"{1}\" y=\"{2:.1}\" text-anchor=\"end\" fill=\"#555\">{tick:.2} ×</text>\n",
            y(tick),
            left - 6.0,
            y(tick) + 4.0
        );
    }
    let mut ticks = sizes.clone();
    ticks.sort_unstable();
    ticks.dedup();
    for size in ticks {
        out += &format!(
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"#eee\"/>\
             <text x=\"{0:.1}\" y=\"{1}\" text-anchor=\"middle\" fill=\"#555\">{size} rows</text>\n",
            x(size),
            bottom + 18.0
        );
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = SERIES[i % SERIES.len()];
        let base = points[0].1;
        let path: Vec<String> = points
            .iter()
            .map(|(size, cpu)| format!("{:.1},{:.1}", x(*size), y(cpu / base)))
            .collect();
        out += &format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>\n",
            path.join(" ")
        );
        // The first points all sit at 1.0: their µs go in the legend instead.
        for (size, cpu) in points.iter().skip(1) {
            out += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{colour}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{colour}\">{cpu:.0} µs</text>\n",
                x(*size),
                y(cpu / base),
                x(*size) + 5.0,
                y(cpu / base) - 5.0
            );
        }
        let legend = top + 20.0 * i as f64;
        out += &format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            right + 20.0,
            legend,
            right + 36.0,
            legend + 9.0,
            escape(&format!("{name}: {base:.0} µs at {low}"))
        );
    }
    Some(out + "</svg>\n")
}
