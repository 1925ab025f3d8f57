//! The report in three forms: Markdown in the seeds' shape (summary, findings by severity with
//! evidence and fix, a readiness score per area, a checklist), JSON for tools, and SARIF 2.1.0
//! for code-hosting platforms' code-scanning views.

mod json;
mod markdown;
mod sarif;

pub use json::json;
pub use markdown::markdown;
pub use sarif::sarif;

/// Report formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Markdown for people (the default on a terminal).
    Markdown,
    /// JSON: summary, scores, findings, checklist.
    Json,
    /// SARIF 2.1.0.
    Sarif,
}

impl Format {
    /// `markdown` / `md`, `json`, `sarif`.
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "markdown" | "md" => Some(Format::Markdown),
            "json" => Some(Format::Json),
            "sarif" => Some(Format::Sarif),
            _ => None,
        }
    }

    /// Renders `report` in this format.
    pub fn render(self, report: &crate::Report) -> String {
        match self {
            Format::Markdown => markdown(report),
            Format::Json => json(report),
            Format::Sarif => sarif(report),
        }
    }
}

/// The overall score: checklist items passed out of applicable, as a percentage (100 when
/// nothing applied).
pub fn overall(report: &crate::Report) -> (usize, usize, u32) {
    let (mut passed, mut applicable) = (0, 0);
    for area in crate::Area::ALL {
        let (p, a) = report.score(area);
        passed += p;
        applicable += a;
    }
    (passed, applicable, percent(passed, applicable))
}

/// `passed / applicable` as a whole percentage (100 for 0/0).
pub fn percent(passed: usize, applicable: usize) -> u32 {
    if applicable == 0 {
        return 100;
    }
    u32::try_from(passed * 100 / applicable).unwrap_or(100)
}
