//! The QUIC service: a thin shell around [`crate::Engine`].
