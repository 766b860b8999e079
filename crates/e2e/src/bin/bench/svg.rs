//! A small SVG line chart: median ADD latency against the number of secondary networks.

/// One line of the chart.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// Renders the chart.
pub fn chart(title: &str, series: &[Series]) -> String {
    let (w, h, l, r, t, b) = (640.0, 400.0, 60.0, 20.0, 40.0, 50.0);
    let xmax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |v: f64| l + v / xmax * (w - l - r);
    let y = |v: f64| h - b - v / ymax * (h - t - b);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    s += &format!(
        r#"<rect width="{w}" height="{h}" fill="white"/><text x="{}" y="20" text-anchor="middle" font-size="14">{title}</text>"#,
        w / 2.0
    );
    s += &format!(
        r#"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{l}" y1="{t}" x2="{l}" y2="{}" stroke="black"/>"#,
        h - b,
        w - r,
        h - b,
        h - b
    );
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        s += &format!(
            r##"<text x="{}" y="{}" text-anchor="end">{v:.0}</text><line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="#ddd"/>"##,
            l - 5.0,
            y(v) + 4.0,
            y(v),
            w - r,
            y(v)
        );
    }
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.dedup();
    for v in xs {
        s += &format!(
            r#"<text x="{}" y="{}" text-anchor="middle">{v:.0}</text>"#,
            x(v),
            h - b + 15.0
        );
    }
    s += &format!(
        r#"<text x="{}" y="{}" text-anchor="middle">secondary networks per pod</text>"#,
        w / 2.0,
        h - 10.0
    );
    s += &format!(
        r#"<text x="15" y="{}" transform="rotate(-90 15 {})" text-anchor="middle">median ADD latency (ms)</text>"#,
        h / 2.0,
        h / 2.0
    );
    for (i, se) in series.iter().enumerate() {
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|(a, c)| format!("{:.1},{:.1}", x(*a), y(*c)))
            .collect();
        s += &format!(
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            se.color,
            pts.join(" ")
        );
        for (a, c) in &se.points {
            s += &format!(
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                x(*a),
                y(*c),
                se.color
            );
        }
        s += &format!(
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            l + 10.0,
            t + 5.0 + 16.0 * i as f64,
            se.color,
            l + 25.0,
            t + 14.0 + 16.0 * i as f64,
            se.name
        );
    }
    s + "</svg>\n"
}
