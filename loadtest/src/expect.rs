//! The verdict the harness expects for each request, from what it knows of the fleet: the
//! engine's order (SPEC §6) — format, dates, freshness, revocation, signatures, one-time use,
//! policy — applied to the credential's fields. Any difference from the engine's answer is a
//! mismatch, and a mismatch fails the run.

pub use gatehouse_engine::dev::population::{expected, reached_one_time_use, repeated, Presented};
use gatehouse_protocol::Reason;

/// Answers that say nothing about the token (the engine asks for a retry): counted as
/// errors, not as mismatches.
pub fn is_retry(r: Reason) -> bool {
    r.is_retryable()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gatehouse_engine::dev::population::credential;
    use gatehouse_engine::Role;

    #[test]
    fn order_is_dates_then_freshness_then_revocation_then_signature_then_policy() {
        let now = 1_800_000_000;
        let c = credential(now, 1);
        let partner = Role::Partner;
        assert_eq!(
            expected(&c, false, &partner, Presented::Genuine, now, 0),
            Reason::Accepted
        );
        assert_eq!(
            expected(&c, true, &partner, Presented::Forged, now, 0),
            Reason::Revoked
        );
        assert_eq!(
            expected(&c, true, &partner, Presented::Stale, now, 0),
            Reason::Stale
        );
        assert_eq!(
            expected(&c, false, &partner, Presented::Forged, now, 0),
            Reason::BadDeviceSignature
        );
        let mut old = c.clone();
        old.not_after = now - 1;
        assert_eq!(
            expected(&old, true, &partner, Presented::Stale, now, 0),
            Reason::Expired
        );
        assert_eq!(
            expected(&old, true, &partner, Presented::Garbage, now, 0),
            Reason::Malformed
        );
        assert_eq!(repeated(Reason::Accepted), Reason::Replayed);
        assert_eq!(repeated(Reason::NotAdmitted), Reason::Replayed);
        assert_eq!(repeated(Reason::Revoked), Reason::Revoked);
    }
}
