//! Development PKI.
