//! The values a credential is made of: types, categories, unit paths, entitlements, dates.

use crate::DecodeError;

macro_rules! numbered_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $num:literal, $label:literal; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $num, )*
        }

        impl $name {
            /// Every value, in number order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The stable number of this value on the wire.
            pub fn code(self) -> u8 {
                self as u8
            }

            /// The value with this number.
            pub fn from_code(code: u64) -> Result<Self, DecodeError> {
                match code {
                    $( $num => Ok($name::$variant), )*
                    _ => Err(DecodeError::UnknownValue($what)),
                }
            }

            /// The stable snake_case name used in config files, logs and metrics.
            pub fn label(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )*
                }
            }

            /// The value with this label.
            pub fn from_label(label: &str) -> Option<Self> {
                match label {
                    $( $label => Some($name::$variant), )*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.label())
            }
        }
    };
}

numbered_enum! {
    /// What a credential is.
    CredentialType, "credential type" {
        /// Military identity card.
        MilitaryId = 1, "military_id";
        /// Leave pass: valid only between its leave dates.
        LeavePass = 2, "leave_pass";
        /// Business-trip pass.
        BusinessTripPass = 3, "business_trip_pass";
        /// Service confirmation.
        ServiceConfirmation = 4, "service_confirmation";
        /// Family member of a service member (the sponsor).
        FamilyMember = 5, "family_member";
        /// Reservist card, valid during the reserve-training years.
        Reservist = 6, "reservist";
        /// Cadet or officer candidate.
        CadetCandidate = 7, "cadet_candidate";
        /// Social-service agent.
        SocialServiceAgent = 8, "social_service_agent";
        /// Civil-servant identity card.
        CivilServantId = 9, "civil_servant_id";
        /// Driver's licence.
        DriversLicence = 10, "drivers_licence";
    }
}

numbered_enum! {
    /// Who the holder is.
    HolderCategory, "holder category" {
        /// Enlisted soldier.
        Enlisted = 1, "enlisted";
        /// Non-commissioned officer.
        Nco = 2, "nco";
        /// Commissioned officer.
        Officer = 3, "officer";
        /// Cadet or officer candidate.
        Cadet = 4, "cadet";
        /// Civilian employee of the armed forces.
        CivilianEmployee = 5, "civilian_employee";
        /// Spouse of a service member.
        Spouse = 6, "spouse";
        /// Child of a service member.
        Child = 7, "child";
        /// Parent of a service member.
        Parent = 8, "parent";
        /// Reservist.
        Reservist = 9, "reservist";
        /// Social-service agent.
        SocialServiceAgent = 10, "social_service_agent";
        /// Veteran with 20 or more years of service.
        LongServiceVeteran = 11, "long_service_veteran";
        /// Civil servant.
        CivilServant = 12, "civil_servant";
        /// Member of the public (e.g. a driver's-licence holder).
        Citizen = 13, "citizen";
    }
}

impl HolderCategory {
    /// Whether this category belongs to a family member, whose credential names a sponsor.
    pub fn is_family(self) -> bool {
        matches!(
            self,
            HolderCategory::Spouse | HolderCategory::Child | HolderCategory::Parent
        )
    }

    /// Whether this category is serving (active duty, including cadets).
    pub fn is_active_duty(self) -> bool {
        matches!(
            self,
            HolderCategory::Enlisted
                | HolderCategory::Nco
                | HolderCategory::Officer
                | HolderCategory::Cadet
        )
    }
}

/// Maximum depth of a unit path.
pub const MAX_UNIT_DEPTH: usize = 8;

/// Where in the organisation a holder belongs: a path from the top, such as
/// corps / division / brigade / battalion, each level a number. Gate policy matches prefixes:
/// a division gate admits every unit path that starts with the division's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UnitPath {
    len: u8,
    levels: [u16; MAX_UNIT_DEPTH],
}

impl UnitPath {
    /// A path from its levels; at most [`MAX_UNIT_DEPTH`] of them.
    pub fn new(levels: &[u16]) -> Result<Self, DecodeError> {
        if levels.len() > MAX_UNIT_DEPTH {
            return Err(DecodeError::TooLong("unit path"));
        }
        let mut out = UnitPath {
            len: levels.len() as u8,
            levels: [0; MAX_UNIT_DEPTH],
        };
        out.levels[..levels.len()].copy_from_slice(levels);
        Ok(out)
    }

    /// The levels, from the top.
    pub fn levels(&self) -> &[u16] {
        &self.levels[..usize::from(self.len)]
    }

    /// Whether `self` lies under (or is) `unit`.
    pub fn is_under(&self, unit: &UnitPath) -> bool {
        self.levels().starts_with(unit.levels())
    }
}

impl std::fmt::Display for UnitPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for l in self.levels() {
            if !first {
                f.write_str("/")?;
            }
            write!(f, "{l}")?;
            first = false;
        }
        Ok(())
    }
}

impl std::str::FromStr for UnitPath {
    type Err = DecodeError;

    /// Parses `"1/12/103"`; the empty string is the root (every unit).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut levels = [0u16; MAX_UNIT_DEPTH];
        let mut n = 0;
        for part in s.split('/').filter(|p| !p.is_empty()) {
            if n == MAX_UNIT_DEPTH {
                return Err(DecodeError::TooLong("unit path"));
            }
            levels[n] = part
                .parse()
                .map_err(|_| DecodeError::OutOfRange("unit path"))?;
            n += 1;
        }
        UnitPath::new(&levels[..n])
    }
}

/// What a credential entitles its holder to, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Entitlements(u32);

impl Entitlements {
    /// May enter bases (gate policy still checks the unit).
    pub const BASE_ENTRY: Entitlements = Entitlements(1 << 0);
    /// May use military-discount offers at partners.
    pub const MILITARY_DISCOUNT: Entitlements = Entitlements(1 << 1);
    /// May use welfare facilities (welfare gates admit family members that hold it).
    pub const WELFARE_FACILITIES: Entitlements = Entitlements(1 << 2);
    /// Every bit this version defines.
    pub const ALL: Entitlements = Entitlements(0b111);
    /// No entitlement.
    pub const NONE: Entitlements = Entitlements(0);

    /// From raw bits; bits this version does not define are refused.
    pub fn from_bits(bits: u64) -> Result<Self, DecodeError> {
        if bits & !u64::from(Self::ALL.0) != 0 {
            return Err(DecodeError::UnknownValue("entitlements"));
        }
        Ok(Entitlements(bits as u32))
    }

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Entitlements) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Entitlements {
    type Output = Entitlements;
    fn bitor(self, rhs: Self) -> Self {
        Entitlements(self.0 | rhs.0)
    }
}

/// A calendar date, kept as the integer `YYYYMMDD` (what the credential carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date(u32);

impl Date {
    /// A date from year, month and day; refused unless it exists in the Gregorian calendar.
    pub fn new(year: u32, month: u32, day: u32) -> Result<Self, DecodeError> {
        if !(1800..=9999).contains(&year) || !(1..=12).contains(&month) {
            return Err(DecodeError::OutOfRange("date"));
        }
        if day == 0 || day > days_in_month(year, month) {
            return Err(DecodeError::OutOfRange("date"));
        }
        Ok(Date(year * 10000 + month * 100 + day))
    }

    /// From the `YYYYMMDD` integer.
    pub fn from_yyyymmdd(v: u64) -> Result<Self, DecodeError> {
        let v = u32::try_from(v).map_err(|_| DecodeError::OutOfRange("date"))?;
        Date::new(v / 10000, v / 100 % 100, v % 100)
    }

    /// The `YYYYMMDD` integer.
    pub fn yyyymmdd(self) -> u32 {
        self.0
    }

    /// The civil date of a Unix time (seconds) at a fixed offset from UTC, in seconds
    /// (Korea Standard Time is +32,400).
    pub fn from_unix(unix_secs: u64, utc_offset_secs: i32) -> Self {
        let local = i64::try_from(unix_secs)
            .unwrap_or(i64::MAX)
            .saturating_add(i64::from(utc_offset_secs));
        let days = local.div_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        Date(y.clamp(0, 9999) as u32 * 10000 + m * 100 + d)
    }

    /// The year.
    pub fn year(self) -> u32 {
        self.0 / 10000
    }

    /// Whether someone born on `self` counts as 19 or older on `today` under Korea's Youth
    /// Protection Act: a youth is under 19 in full years, except that everyone who turns 19
    /// this year is an adult from 1 January. So: born in or before `today`'s year − 19.
    pub fn is_19_or_older_kr(self, today: Date) -> bool {
        today.year() >= self.year() + 19
    }

    /// Age in whole years on `today` of someone born on `self`.
    pub fn age_on(self, today: Date) -> u32 {
        let (by, bmd) = (self.0 / 10000, self.0 % 10000);
        let (ty, tmd) = (today.0 / 10000, today.0 % 10000);
        if ty < by {
            return 0;
        }
        let years = ty - by;
        if tmd < bmd {
            years.saturating_sub(1)
        } else {
            years
        }
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_their_codes_and_labels() {
        for t in CredentialType::ALL {
            assert_eq!(CredentialType::from_code(u64::from(t.code())).unwrap(), *t);
            assert_eq!(CredentialType::from_label(t.label()), Some(*t));
        }
        for c in HolderCategory::ALL {
            assert_eq!(HolderCategory::from_code(u64::from(c.code())).unwrap(), *c);
        }
        assert_eq!(
            CredentialType::from_code(0),
            Err(DecodeError::UnknownValue("credential type"))
        );
        assert_eq!(
            HolderCategory::from_code(99),
            Err(DecodeError::UnknownValue("holder category"))
        );
    }

    #[test]
    fn unit_paths_match_by_prefix() {
        let div: UnitPath = "1/12".parse().unwrap();
        let bat: UnitPath = "1/12/103/2".parse().unwrap();
        let other: UnitPath = "1/13/103".parse().unwrap();
        assert!(bat.is_under(&div));
        assert!(div.is_under(&div));
        assert!(!other.is_under(&div));
        assert!(!div.is_under(&bat));
        assert!(bat.is_under(&UnitPath::default()));
        assert_eq!(bat.to_string(), "1/12/103/2");
        assert!("1/2/3/4/5/6/7/8/9".parse::<UnitPath>().is_err());
        assert!("1/70000".parse::<UnitPath>().is_err());
    }

    #[test]
    fn dates_validate_and_count_age() {
        assert!(Date::new(2024, 2, 29).is_ok());
        assert!(Date::new(2023, 2, 29).is_err());
        assert!(Date::new(2023, 13, 1).is_err());
        assert!(Date::from_yyyymmdd(20010431).is_err());
        let born = Date::new(2005, 11, 24).unwrap();
        assert_eq!(born.age_on(Date::new(2024, 11, 23).unwrap()), 18);
        assert_eq!(born.age_on(Date::new(2024, 11, 24).unwrap()), 19);
        assert_eq!(born.age_on(Date::new(2004, 1, 1).unwrap()), 0);
        // Turning 19 in December 2024 makes one an adult from 1 January 2024.
        assert!(!born.is_19_or_older_kr(Date::new(2023, 12, 31).unwrap()));
        assert!(born.is_19_or_older_kr(Date::new(2024, 1, 1).unwrap()));
    }

    #[test]
    fn unix_times_map_to_civil_dates() {
        assert_eq!(Date::from_unix(0, 0).yyyymmdd(), 19700101);
        // 2026-11-23T15:00:00Z is already the 24th in Korea.
        assert_eq!(Date::from_unix(1_795_446_000, 0).yyyymmdd(), 20261123);
        assert_eq!(
            Date::from_unix(1_795_446_000, 9 * 3600).yyyymmdd(),
            20261124
        );
        assert_eq!(Date::from_unix(951_782_400, 0).yyyymmdd(), 20000229);
        // Absurd clocks give a far-future date, never a panic or a wrap to 1969.
        assert!(Date::from_unix(u64::MAX, 32_400).yyyymmdd() >= 99990101);
        assert!(Date::from_unix(i64::MAX as u64, 32_400).yyyymmdd() >= 99990101);
    }

    #[test]
    fn entitlements_refuse_unknown_bits() {
        assert!(Entitlements::from_bits(0b111).is_ok());
        assert!(Entitlements::from_bits(0b1000).is_err());
        let e = Entitlements::BASE_ENTRY | Entitlements::MILITARY_DISCOUNT;
        assert!(e.contains(Entitlements::MILITARY_DISCOUNT));
        assert!(!e.contains(Entitlements::WELFARE_FACILITIES));
    }
}
