//! This crate only has tests; see tests/ and e2e/.
