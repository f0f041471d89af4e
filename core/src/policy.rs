//! Scanner policy: what each role admits and what its verdict may disclose.

use gatehouse_protocol::{
    Attributes, Credential, CredentialType, Date, Entitlements, HolderCategory, Predicate, Reason,
    Verdict,
};

use super::mdoc::Disclosed;
use super::registry::{Role, Scanner};

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

/// The verdict for an mdoc presentation that passed every other check (SPEC §12.4), as the
/// scanner's role and mdoc rules see it.
/// - A gate admits the docTypes it lists (`mdoc_doc_types`; none by default), from the
///   issuing authorities it lists (`mdoc_authorities`; any trusted IACA when empty); it learns
///   when the document's validity ends, nothing else.
/// - A partner's predicate (the military discount) is not something an mdoc attests: an mdoc
///   is `not_eligible` there.
/// - An age counter takes ISO's `age_over_19` (full years, the issuer's statement), or else
///   `birth_date` in full years at its civil date; it learns predicate 3, `iso_age_over_19`.
pub fn decide_mdoc(scanner: &Scanner, d: &Disclosed, now: u64, utc_offset_secs: i32) -> Verdict {
    match &scanner.role {
        Role::Gate { .. } => {
            let rules = &scanner.mdoc;
            let authority_ok =
                rules.authorities.is_empty() || rules.authorities.contains(&d.authority);
            if rules.doc_types.contains(&d.doc_type) && authority_ok {
                Verdict::new(
                    Reason::Accepted,
                    Attributes {
                        valid_until: Some(d.valid_until),
                        ..Attributes::default()
                    },
                )
            } else {
                Verdict::deny(Reason::NotAdmitted)
            }
        }
        Role::Partner => Verdict::deny(Reason::NotEligible),
        Role::AgeCheck => {
            let over = match (d.age_over_19, d.birth_date) {
                (Some(flag), _) => Some(flag),
                (None, Some(born)) => {
                    let now = i64::try_from(now).unwrap_or(i64::MAX);
                    let today = gatehouse_mdoc::time::civil(now, utc_offset_secs);
                    Some(gatehouse_mdoc::time::full_years(born, today) >= 19)
                }
                (None, None) => None,
            };
            match over {
                Some(true) => predicate(Predicate::IsoAgeOver19),
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
