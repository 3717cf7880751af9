//! The content-addressed build cache: step keys, manifests, the object store,
//! the action table, the file-hash memo and the lock.

pub mod key;
pub mod manifest;
pub mod memo;
pub mod remote;
pub mod store;

pub use key::{canonical_json, KeyInputs, CACHE_FORMAT};
pub use manifest::{Entry, Manifest};
pub use memo::HashMemo;
pub use store::{BuildRecord, Cache};
