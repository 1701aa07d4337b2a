//! Routing rules written as files.
//!
//! A rules directory holds TOML files declaring endpoints, routes (conditions in the
//! IoT Hub routing query language), a fallback and enrichments. The pipeline here is
//! text → [`lex`] → [`parse`] (syntax tree) → [`compile`] ([`ir`]) → [`eval`], with
//! [`load`] turning files into a [`RuleSet`] and every problem into a [`Diagnostic`].
//! [`interp`] is an independent, naive evaluator that tests compare against.

pub mod ast;
pub mod batch;
pub mod body;
pub mod compile;
pub mod diag;
pub mod eval;
pub mod file;
pub mod insight;
mod insight_load;
pub mod interp;
pub mod ir;
pub mod lex;
pub mod load;
pub mod parse;
pub mod ruleset;
mod scan;
pub mod value;
pub mod view;

pub use diag::Diagnostic;
pub use load::{SourceFile, load_dir, load_sources, read_dir};
pub use ruleset::{Names, Outcome, Route, RuleSet};
pub use view::{EventView, MessageView};
