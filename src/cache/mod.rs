//! The content-addressed build cache: step keys, manifests, the object store,
//! the action table, the file-hash memo and the lock.
//!
//! # The rule
//!
//! **yibuild never changes a byte, mode, owner, link count or location of
//! anything outside its cache and build directories and a step's declared
//! output.** Sources are read, hashed and referenced, never adopted:
//!
//! - A step that passes a file through (a `tokenizer.json`, a whole model
//!   folder) hardlinks it only when it is a cache object
//!   ([`copy::is_object`]); anything else, a user's source above all, gets its
//!   own copy ([`crate::fs::copy::clone_or_copy`]: a reflink where the filesystem can, a
//!   plain copy otherwise).
//! - Storing an output moves into the object store only files the step wrote
//!   and nothing else links; a file reached through a symlink or hardlinked
//!   from elsewhere is copied, never moved or chmodded ([`output`]).
//! - Hardlinks exist only between objects and what the cache owns: the
//!   outputs materialized under the build directory. Those can be edited in
//!   place (root ignores 0444), so each materialization records the files'
//!   identity and the next build repairs what changed ([`materialize`]).
//! - Everything read back from the cache, local or remote, passes one gate
//!   ([`Manifest::parse`]) before any of it becomes a path; `verify` reports
//!   the rest, `verify --repair` and `gc` remove it. No cache content can make
//!   yibuild panic, write outside its directories or link a foreign file.
//! - Every name that becomes a path passes [`crate::fs::names`]; `clean` and `gc`
//!   remove only what is inside their directory and made by yibuild.
//!
//! `tests/user_data.rs` holds the rule to this: it builds the demo in a copy
//! and compares every source file's bytes, mode, inode, link count and mtime.

pub mod error;
pub mod key;
pub mod manifest;
pub mod materialize;
pub mod memo;
pub mod output;
pub mod remote;
pub mod store;

pub use error::CacheError;
pub use key::{canonical_json, KeyInputs, CACHE_FORMAT};
pub use manifest::{Entry, Manifest};
pub use materialize::{Materialized, OutputState, Stamp};
pub use memo::HashMemo;
pub use store::{BuildRecord, Cache};
