//! Payload templates: `{{seq}}`, `{{device}}`, `{{ts}}`, `{{rand:LO:HI}}`, `{{randint:LO:HI}}`.

use anyhow::bail;

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Seq,
    Device,
    Ts,
    Rand(f64, f64),
    RandInt(i64, i64),
}

#[derive(Debug, Clone)]
pub struct Template(Vec<Part>);

impl Template {
    pub fn parse(s: &str) -> anyhow::Result<Template> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find("}}") else {
                bail!("unclosed {{{{ in the payload template");
            };
            let tag = &rest[open + 2..open + close];
            let bounds = |t: &str| -> anyhow::Result<(String, String)> {
                let mut it = t.splitn(3, ':').skip(1);
                match (it.next(), it.next()) {
                    (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                    _ => bail!("{{{{{t}}}}} needs bounds like {{{{rand:0:100}}}}"),
                }
            };
            parts.push(match tag {
                "seq" => Part::Seq,
                "device" => Part::Device,
                "ts" => Part::Ts,
                t if t.starts_with("randint:") => {
                    let (a, b) = bounds(t)?;
                    Part::RandInt(a.parse()?, b.parse()?)
                }
                t if t.starts_with("rand:") => {
                    let (a, b) = bounds(t)?;
                    Part::Rand(a.parse()?, b.parse()?)
                }
                other => bail!("unknown placeholder {{{{{other}}}}}; use seq, device, ts, rand:LO:HI or randint:LO:HI"),
            });
            rest = &rest[open + close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template(parts))
    }

    /// Renders into `out` (cleared first).
    pub fn render(&self, out: &mut Vec<u8>, seq: u64, device: &str, rng: &mut Rng) {
        use std::io::Write;
        out.clear();
        for p in &self.0 {
            let _ = match p {
                Part::Text(t) => out.write_all(t.as_bytes()),
                Part::Seq => write!(out, "{seq}"),
                Part::Device => out.write_all(device.as_bytes()),
                Part::Ts => write!(out, "{}", weir_core::time::now_ms()),
                Part::Rand(lo, hi) => write!(out, "{:.2}", lo + (hi - lo) * rng.unit()),
                Part::RandInt(lo, hi) => write!(
                    out,
                    "{}",
                    lo + (rng.next() % ((hi - lo + 1).max(1) as u64)) as i64
                ),
            };
        }
    }
}

/// xorshift64*: fast, good enough for test data, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let t = Template::parse(r#"{"d":"{{device}}","n":{{seq}},"t":{{randint:5:5}}}"#)
            .expect("parses");
        let mut out = Vec::new();
        t.render(&mut out, 7, "sim-1", &mut Rng::new(1));
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"d":"sim-1","n":7,"t":5}"#
        );
        assert!(Template::parse("{{nope}}").is_err());
        assert!(Template::parse("{{seq").is_err());
    }
}
