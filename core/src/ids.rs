//! Identifier newtypes.

use std::fmt;
use std::sync::Arc;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("id is empty")]
    Empty,
    #[error("id is {0} characters long; the limit is 128")]
    TooLong(usize),
    #[error(
        "id contains {0:?}; allowed are ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ '"
    )]
    BadChar(char),
}

/// A device id as IoT Hub defines it: 1..=128 ASCII characters from a fixed set,
/// case-sensitive. Cheap to clone because every event carries one.
/// Hashing uses the string, so the engine can place a device on a worker consistently.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(Arc<str>);

impl DeviceId {
    /// Validates `s` against IoT Hub's device-id alphabet.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        validate(s)?;
        Ok(DeviceId(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks an IoT Hub device or module id.
pub fn validate(s: &str) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::Empty);
    }
    let n = s.chars().count();
    if n > 128 {
        return Err(InvalidId::TooLong(n));
    }
    if let Some(c) = s.chars().find(|c| !allowed(*c)) {
        return Err(InvalidId::BadChar(c));
    }
    Ok(())
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.%_*?!(),:=@$'".contains(c)
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({:?})", &*self.0)
    }
}

impl std::borrow::Borrow<str> for DeviceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DeviceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hub_alphabet_and_rejects_others() {
        assert!(DeviceId::parse("dev-1.a_b:c=d@e$f'g").is_ok());
        assert_eq!(DeviceId::parse(""), Err(InvalidId::Empty));
        assert_eq!(DeviceId::parse("a/b"), Err(InvalidId::BadChar('/')));
        assert_eq!(DeviceId::parse("a b"), Err(InvalidId::BadChar(' ')));
        assert_eq!(
            DeviceId::parse(&"x".repeat(129)),
            Err(InvalidId::TooLong(129))
        );
    }
}
