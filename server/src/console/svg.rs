//! Inline SVG charts drawn from computed coordinates: no script, no
//! external asset, no inline style (the CSP forbids it), only presentation
//! attributes and the stylesheet's classes.

use maud::{html, Markup};

/// Drawing area, in SVG units.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// One series of a chart: its name, CSS class and values (one per x slot;
/// `None` leaves a gap).
pub struct Series<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Class of its line and dots (`s1`, `s2`).
    pub class: &'a str,
    /// Values, in percent.
    pub values: Vec<Option<f64>>,
}

fn x_of(i: usize, n: usize) -> f64 {
    let span = WIDTH - LEFT - RIGHT;
    if n <= 1 {
        LEFT + span / 2.0
    } else {
        LEFT + span * i as f64 / (n - 1) as f64
    }
}

fn y_of(pct: f64) -> f64 {
    let span = HEIGHT - TOP - BOTTOM;
    TOP + span * (1.0 - pct.clamp(0.0, 100.0) / 100.0)
}

/// A percentage line chart over `labels` (x slots, oldest first).
pub fn percent_chart(title: &str, labels: &[String], series: &[Series<'_>]) -> Markup {
    let n = labels.len();
    let every = n.div_ceil(6).max(1);
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title) {
                title { (title) }
                @for pct in [0.0, 25.0, 50.0, 75.0, 100.0] {
                    line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y_of(pct)) y2=(y_of(pct)) {}
                    text.axis x=(LEFT - 6.0) y=(y_of(pct) + 4.0) text-anchor="end" { (pct) "%" }
                }
                @for (i, label) in labels.iter().enumerate() {
                    @if i % every == 0 {
                        text.axis x=(x_of(i, n)) y=(HEIGHT - 8.0) text-anchor="middle" { (label) }
                    }
                }
                @for s in series {
                    polyline class=(format!("line {}", s.class)) fill="none" points=(polyline(&s.values, n)) {}
                    @for (i, v) in s.values.iter().enumerate() {
                        @if let Some(v) = v {
                            circle class=(format!("dot {}", s.class)) cx=(x_of(i, n)) cy=(y_of(*v)) r="3" {
                                title { (s.name) ": " (format!("{v:.0}")) "%" }
                            }
                        }
                    }
                }
            }
            figcaption {
                (title) " — "
                @for s in series { span class=(format!("key {}", s.class)) { (s.name) } " " }
            }
        }
    }
}

/// `x,y` pairs of the present values.
fn polyline(values: &[Option<f64>], n: usize) -> String {
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x_of(i, n), y_of(v))))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_land_inside_the_plot_and_gaps_are_skipped() {
        assert_eq!(y_of(100.0), TOP);
        assert_eq!(y_of(0.0), HEIGHT - BOTTOM);
        assert_eq!(y_of(150.0), TOP);
        assert_eq!(x_of(0, 3), LEFT);
        assert_eq!(x_of(2, 3), WIDTH - RIGHT);
        assert_eq!(
            polyline(&[Some(0.0), None, Some(100.0)], 3)
                .split(' ')
                .count(),
            2
        );
        let svg = percent_chart(
            "t <x>",
            &["a".into()],
            &[Series {
                name: "n",
                class: "s1",
                values: vec![Some(50.0)],
            }],
        )
        .into_string();
        assert!(
            svg.contains("t &lt;x&gt;") && !svg.contains("style="),
            "{svg}"
        );
    }
}
