//! Scanner policy: what each role admits and what its verdict may disclose.

use gatehouse_protocol::{
    Attributes, Credential, CredentialType, Date, Entitlements, HolderCategory, Predicate, Reason,
    Verdict,
};

use super::registry::Role;

/// The verdict for a credential that passed every other check, as `role` sees it.
/// Age checks follow Korea's Youth Protection Act (see [`Date::is_19_or_older_kr`]) at the
/// engine's local civil date.
pub fn decide(role: &Role, c: &Credential, now: u64, utc_offset_secs: i32) -> Verdict {
    match role {
        Role::Gate { unit, admits } => {
            let needed = if c.credential_type == CredentialType::FamilyMember {
                Entitlements::WELFARE_FACILITIES
            } else {
                Entitlements::BASE_ENTRY
            };
            if !admits.contains(&c.credential_type)
                || !c.entitlements.contains(needed)
                || !c.unit.is_under(unit)
            {
                return Verdict::deny(Reason::NotAdmitted);
            }
            let valid_until = match c.leave {
                Some((_, end)) => end.min(c.not_after),
                None => c.not_after,
            };
            Verdict::new(
                Reason::Accepted,
                Attributes {
                    credential_type: Some(c.credential_type),
                    category: Some(c.category),
                    unit: Some(c.unit),
                    valid_until: Some(valid_until),
                    predicate: None,
                },
            )
        }
        Role::Partner => {
            if military_discount_eligible(c) {
                predicate(Predicate::MilitaryDiscount)
            } else {
                Verdict::deny(Reason::NotEligible)
            }
        }
        Role::AgeCheck => {
            let over = match (c.birth_date, c.age_over_19) {
                (Some(born), _) => {
                    Some(born.is_19_or_older_kr(Date::from_unix(now, utc_offset_secs)))
                }
                (None, flag) => flag,
            };
            match over {
                Some(true) => predicate(Predicate::AgeOver19),
                Some(false) => Verdict::deny(Reason::NotEligible),
                None => Verdict::deny(Reason::AttributeMissing),
            }
        }
    }
}

fn predicate(p: Predicate) -> Verdict {
    Verdict::new(
        Reason::Accepted,
        Attributes {
            predicate: Some(p),
            ..Attributes::default()
        },
    )
}

/// Active duty (including on leave), family members, reservists in their training years (the
/// credential is only valid then) and long-service veterans, when the issuer granted the
/// discount entitlement.
pub fn military_discount_eligible(c: &Credential) -> bool {
    let category_ok = c.category.is_active_duty()
        || c.category.is_family()
        || matches!(
            c.category,
            HolderCategory::Reservist | HolderCategory::LongServiceVeteran
        );
    category_ok && c.entitlements.contains(Entitlements::MILITARY_DISCOUNT)
}
