//! Partition directories from templates.

use chrono::{DateTime, Datelike, Timelike};

/// Fills `template` (`date={date}/hour={hour}`) for the UTC hour containing `ms`.
pub fn partition_dir(template: &str, ms: i64) -> String {
    let t = DateTime::from_timestamp_millis(ms).unwrap_or_default();
    template
        .replace("{date}", &t.format("%Y-%m-%d").to_string())
        .replace("{hour}", &format!("{:02}", t.hour()))
        .replace("{year}", &format!("{:04}", t.year()))
        .replace("{month}", &format!("{:02}", t.month()))
        .replace("{day}", &format!("{:02}", t.day()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_placeholders_in_utc() {
        assert_eq!(
            partition_dir("date={date}/hour={hour}", 1_767_323_045_000),
            "date=2026-01-02/hour=03"
        );
        assert_eq!(
            partition_dir("y={year}/m={month}/d={day}", 0),
            "y=1970/m=01/d=01"
        );
    }
}
