//! Union vocabularies for merges (in progress).
