//! The reference scanner client.
