//! Bar charts of the benchmark documents: `cargo xtask plot` reads the tables of
//! docs/benchmarks*.md and writes an SVG beside each (`docs/benchmarks.svg`, …), which the
//! documents show. The benchmark commands call it after writing their document, so a chart
//! always shows the figures of the table it was drawn from.

use std::fmt::Write as _;
use std::path::Path;

/// One chart: groups (table rows) of labelled bars (one per series).
struct Chart {
    title: String,
    groups: Vec<(String, Vec<(String, f64)>)>,
}

/// A Markdown table: its header cells and rows of cells.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// The first table after the heading that starts with `heading`.
fn table_after(doc: &str, heading: &str) -> Option<Table> {
    let mut lines = doc.lines().skip_while(|l| !l.starts_with(heading)).skip(1);
    let header = cells(lines.find(|l| l.starts_with('|'))?);
    let rows = lines
        .skip(1) // the |---| line
        .take_while(|l| l.starts_with('|'))
        .map(cells)
        .collect();
    Some(Table { header, rows })
}

/// A number at the start of a cell ("85688", "39.7", "0.97× (…)").
fn number(cell: &str) -> Option<f64> {
    let end = cell
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(cell.len());
    cell[..end].parse().ok()
}

/// A wide table (a row per group, a column per series) as a chart of the columns `series`
/// (by header text) of the rows whose first cell `keep` accepts.
fn wide(t: &Table, title: &str, series: &[&str], keep: impl Fn(&str) -> bool) -> Chart {
    let cols: Vec<(usize, &str)> = series
        .iter()
        .filter_map(|s| t.header.iter().position(|h| h == s).map(|i| (i, *s)))
        .collect();
    let groups = t
        .rows
        .iter()
        .filter(|r| r.first().is_some_and(|g| keep(g)))
        .map(|r| {
            let bars = cols
                .iter()
                .filter_map(|&(i, s)| Some((s.to_string(), number(r.get(i)?)?)))
                .collect();
            (r[0].clone(), bars)
        })
        .collect();
    Chart {
        title: title.to_string(),
        groups,
    }
}

/// A long table (a row per group and series) as a chart of column `value`, grouped by the
/// first column, one bar per value of the second, for the groups `keep` accepts.
fn long(t: &Table, title: &str, value: &str, keep: impl Fn(&str) -> bool) -> Chart {
    let v = t.header.iter().position(|h| h == value).unwrap_or(2);
    let mut groups: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    for r in t.rows.iter().filter(|r| r.len() > v && keep(&r[0])) {
        let Some(x) = number(&r[v]) else { continue };
        match groups.iter_mut().find(|(g, _)| *g == r[0]) {
            Some((_, bars)) => bars.push((r[1].clone(), x)),
            None => groups.push((r[0].clone(), vec![(r[1].clone(), x)])),
        }
    }
    Chart {
        title: title.to_string(),
        groups,
    }
}

/// Bar colours by series position; the first series (Ballast's own path) stands out.
const PALETTE: [&str; 6] = [
    "#d9480f", "#1c7ed6", "#2f9e44", "#7048e8", "#868e96", "#f59f00",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The charts, one under the other, as one SVG document. Each chart scales its bars to its
/// own largest value.
fn svg(charts: &[Chart]) -> String {
    const W: f64 = 860.0;
    const LABEL: f64 = 250.0;
    const BAR_MAX: f64 = 500.0;
    const BAR_H: f64 = 13.0;
    const GAP: f64 = 3.0;
    let mut body = String::new();
    let mut y = 10.0;
    for c in charts {
        y += 22.0;
        let _ = writeln!(
            body,
            r#"<text x="10" y="{y}" font-size="15" font-weight="bold">{}</text>"#,
            escape(&c.title)
        );
        let max = c
            .groups
            .iter()
            .flat_map(|(_, b)| b.iter().map(|(_, v)| *v))
            .fold(0.0, f64::max)
            .max(f64::MIN_POSITIVE);
        for (g, bars) in &c.groups {
            y += 20.0;
            let _ = writeln!(
                body,
                r#"<text x="10" y="{y}" font-size="13" font-weight="bold">{}</text>"#,
                escape(g)
            );
            y += 4.0;
            for (i, (s, v)) in bars.iter().enumerate() {
                let w = (v / max * BAR_MAX).max(1.0);
                let ty = y + BAR_H - 2.0;
                let _ = writeln!(
                    body,
                    r#"<text x="{}" y="{ty}" font-size="11" text-anchor="end">{}</text><rect x="{LABEL}" y="{y}" width="{w:.1}" height="{BAR_H}" fill="{}"/><text x="{:.1}" y="{ty}" font-size="11">{}</text>"#,
                    LABEL - 6.0,
                    escape(s),
                    PALETTE[i % PALETTE.len()],
                    LABEL + w + 4.0,
                    format_value(*v)
                );
                y += BAR_H + GAP;
            }
        }
        y += 8.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{:.0}\" \
         font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n",
        y + 10.0
    )
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The charts of one benchmark document (by file name), or none for documents without any.
fn charts_of(name: &str, doc: &str) -> Vec<Chart> {
    let mut out = Vec::new();
    match name {
        "benchmarks.md" => {
            if let Some(t) = table_after(doc, "## 1.") {
                out.push(long(
                    &t,
                    "One file, four ways: 4k random IOPS (higher is better)",
                    "IOPS",
                    |w| w.starts_with("4k"),
                ));
                out.push(long(
                    &t,
                    "One file, four ways: 1M sequential MiB/s",
                    "MiB/s",
                    |w| w.starts_with("1M"),
                ));
            }
            if let Some(t) = table_after(doc, "## 2.") {
                out.push(long(&t, "RAM export vs nbdkit memory: IOPS", "IOPS", |w| {
                    w.starts_with("4k")
                }));
            }
        }
        "benchmarks-nvmf.md" => {
            if let Some(t) = table_after(doc, "## Summary") {
                let paths = [
                    "NVMe/TCP (Ballast)",
                    "NBD (Ballast)",
                    "NBD (fio)",
                    "raw in-process",
                    "raw fio",
                ];
                out.push(wide(&t, "4k random IOPS by path", &paths, |w| {
                    w.starts_with("4k")
                }));
            }
        }
        "benchmarks-nexus.md" => {
            let configs = ["bare local file", "1 replica", "2 replicas", "3 replicas"];
            for (heading, title) in [
                (
                    "## Replication: 4k random I/O, remote replicas on devices of their own",
                    "Replication, remote replicas on devices of their own: IOPS",
                ),
                (
                    "## Replication: 4k random I/O, all replicas on one disk",
                    "Replication, all replicas on one disk: IOPS",
                ),
            ] {
                if let Some(t) = table_after(doc, heading) {
                    out.push(wide(&t, title, &configs, |_| true));
                }
            }
        }
        _ => {}
    }
    out.retain(|c| !c.groups.is_empty());
    out
}

/// Draws the charts of `docs/NAME` into `docs/NAME` with `.svg` for `.md`; returns whether
/// there was anything to draw.
pub fn plot_doc(name: &str) -> Result<bool, String> {
    let docs = crate::root().join("docs");
    let path = docs.join(name);
    let doc =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let charts = charts_of(name, &doc);
    if charts.is_empty() {
        return Ok(false);
    }
    let out = docs.join(Path::new(name).with_extension("svg"));
    std::fs::write(&out, svg(&charts)).map_err(|e| format!("writing {}: {e}", out.display()))?;
    eprintln!("xtask plot: wrote {}", out.display());
    Ok(true)
}

/// `cargo xtask plot`: redraws every benchmark document's charts.
pub fn plot(_args: &[String]) -> Result<(), String> {
    for name in ["benchmarks.md", "benchmarks-nvmf.md", "benchmarks-nexus.md"] {
        plot_doc(name)?;
    }
    Ok(())
}

/// The Markdown line that shows `name`'s chart.
pub fn image_line(name: &str, alt: &str) -> String {
    format!(
        "![{alt}]({})\n\n",
        Path::new(name).with_extension("svg").display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# X\n\n## 1. One file\n\ntext\n\n\
        | workload | server | IOPS | MiB/s |\n|---|---|--:|--:|\n\
        | 4k randread QD1 | Ballast | 14605 | 57.0 |\n\
        | 4k randread QD1 | qsd | 12028 | 47.0 |\n\
        | 1M seq read QD8 | Ballast | 1302 | 1302.3 |\n\nafter\n";

    #[test]
    fn long_tables_become_grouped_bars_and_svg() {
        let t = table_after(DOC, "## 1.").unwrap();
        assert_eq!(t.rows.len(), 3);
        let c = long(&t, "t", "IOPS", |w| w.starts_with("4k"));
        assert_eq!(c.groups.len(), 1);
        assert_eq!(
            c.groups[0].1,
            vec![
                ("Ballast".to_string(), 14605.0),
                ("qsd".to_string(), 12028.0)
            ]
        );
        let s = svg(&[c]);
        assert!(s.starts_with("<svg") && s.contains(">14605<") && s.contains(">qsd<"));
        // The largest bar is full width, the other in proportion.
        assert!(s.contains(r#"width="500.0""#));
        assert!(s.contains(&format!(r#"width="{:.1}""#, 12028.0 / 14605.0 * 500.0)));
    }

    #[test]
    fn wide_tables_take_the_named_columns() {
        let doc = "## Summary\n\n| workload | a | b | a ÷ b |\n|---|--:|--:|--:|\n\
                   | 4k x | 10 | 20 | 0.50× (0.4×–0.6×) |\n";
        let t = table_after(doc, "## Summary").unwrap();
        let c = wide(&t, "t", &["a", "b", "missing"], |_| true);
        assert_eq!(
            c.groups,
            vec![(
                "4k x".to_string(),
                vec![("a".to_string(), 10.0), ("b".to_string(), 20.0)]
            )]
        );
        assert_eq!(number("0.50× (0.4×–0.6×)"), Some(0.5));
        assert_eq!(number("—"), None);
    }
}
