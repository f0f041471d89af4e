//! Verdict reason codes. Part of the protocol: numbered, documented, stable. A number is never
//! reused for another meaning.

macro_rules! reasons {
    (
        $( $(#[$doc:meta])* $variant:ident = $num:literal, $label:literal, $text:literal; )*
        @reserved
        $(#[$rdoc:meta])* $rvariant:ident = $rnum:literal, $rlabel:literal, $rtext:literal;
    ) => {
        /// Why a token was accepted or denied.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Reason {
            $( $(#[$doc])* $variant = $num, )*
            $(#[$rdoc])* $rvariant = $rnum,
        }

        impl Reason {
            /// Every reason this version defines, in number order (not the reserved
            /// [`Reason::Unrecognized`], which no engine sends).
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The number on the wire.
            pub fn code(self) -> u8 {
                self as u8
            }

            /// The reason with this number, if this version defines it.
            pub fn from_code(code: u64) -> Option<Reason> {
                match code {
                    $( $num => Some(Reason::$variant), )*
                    _ => None,
                }
            }

            /// Stable snake_case name, used in metrics, logs and JSON.
            pub fn label(self) -> &'static str {
                match self {
                    $( Reason::$variant => $label, )*
                    Reason::$rvariant => $rlabel,
                }
            }

            /// One line for a person: what went wrong.
            pub fn describe(self) -> &'static str {
                match self {
                    $( Reason::$variant => $text, )*
                    Reason::$rvariant => $rtext,
                }
            }
        }
    };
}

reasons! {
    /// The token is valid and the scanner's policy admits it.
    Accepted = 0, "accepted", "valid token, admitted by the scanner's policy";
    /// The bytes are not a token (decoding failed).
    Malformed = 1, "malformed", "the bytes are not a well-formed token";
    /// The token or credential has a version this engine does not read.
    UnsupportedVersion = 2, "unsupported_version", "token or credential version not supported";
    /// The credential names an issuer key the trust list does not hold.
    UnknownIssuer = 3, "unknown_issuer", "issuer key is not in the trust list";
    /// The issuer key is known but was retired, or the credential was issued outside the key's
    /// validity.
    IssuerKeyNotValid = 4, "issuer_key_not_valid", "issuer key retired or not valid for this credential";
    /// The issuer's signature over the credential does not verify.
    BadIssuerSignature = 5, "bad_issuer_signature", "issuer signature does not verify";
    /// The credential's validity has not begun.
    NotYetValid = 6, "not_yet_valid", "credential is not yet valid";
    /// The credential's validity has ended.
    Expired = 7, "expired", "credential has expired";
    /// A leave pass presented outside its leave dates.
    OutsideLeave = 8, "outside_leave", "leave pass used outside its leave dates";
    /// The token's timestamp is older than the acceptance window (a screenshot).
    Stale = 9, "stale", "token is older than the acceptance window";
    /// The token's timestamp is ahead of the engine's clock by more than the allowed skew.
    FromFuture = 10, "from_future", "token timestamp is ahead of the clock";
    /// The credential, its holder, or its sponsor is revoked.
    Revoked = 11, "revoked", "credential, holder or sponsor is revoked";
    /// The device signature over the token does not verify.
    BadDeviceSignature = 12, "bad_device_signature", "device signature does not verify";
    /// The token was already used: it passed every check up to one-time use before (a replay).
    Replayed = 13, "replayed", "token was already used";
    /// The token does not answer the scanner's challenge (NFC).
    ChallengeMismatch = 14, "challenge_mismatch", "token does not answer this scanner's challenge";
    /// The gate does not admit this credential (unit or credential type).
    NotAdmitted = 15, "not_admitted", "this gate does not admit this credential";
    /// The partner or counter predicate is false (not eligible, or under 19).
    NotEligible = 16, "not_eligible", "not eligible for this scanner's predicate";
    /// The credential lacks what the predicate needs (e.g. no birth date for an age check).
    AttributeMissing = 17, "attribute_missing", "credential lacks the attribute this check needs";
    /// The engine is at capacity; retry shortly. Not a judgement of the token.
    Busy = 18, "busy", "engine at capacity, retry";
    /// The scanner is not registered (or was removed).
    UnknownScanner = 19, "unknown_scanner", "scanner is not registered";
    /// The one-time-use table is full: the engine fails closed for new tokens.
    ReplayCapacity = 20, "replay_capacity", "one-time-use table full, failing closed";
    /// The engine could not finish the check (shutting down, internal fault). Retry.
    Unavailable = 21, "unavailable", "engine could not complete the check, retry";
    /// The node restarted with a memory one-time-use table and cannot know whether a token
    /// signed before its start was used: the holder's next token (a wallet rotates every 15 s)
    /// passes. Not retryable with the same token.
    NodeRestarted = 22, "node_restarted", "token predates this node's start or its store's loss, present a fresh one";
    /// The revocation state is older than the node's maximum age (its feed is unreachable or
    /// refused): the engine fails closed rather than accept on revocations it cannot vouch for.
    RevocationsStale = 23, "revocations_stale", "revocation state too old to vouch for, failing closed";
    /// An mdoc signed or authenticated with an algorithm gatehouse does not verify (ES384,
    /// EdDSA, …; SPEC §12).
    UnsupportedAlgorithm = 24, "unsupported_algorithm", "signed with an algorithm this engine does not verify";
    /// An mdoc's disclosed element, or its docType, differs from what the issuer signed in the
    /// MSO (SPEC §12).
    IssuerDataMismatch = 25, "issuer_data_mismatch", "disclosed data differs from what the issuer signed";
    /// An mdoc authenticated by a device MAC at a scanner whose role does not accept one: a MAC
    /// is symmetric, so whoever holds the reader's key could have made it (SPEC §12).
    DeviceMacNotAllowed = 26, "device_mac_not_allowed", "device MAC authentication not accepted at this scanner";
    @reserved
    /// What a reader makes of a reason code its version does not define (a newer engine's):
    /// a deny, not retryable (SPEC §9). Never sent by an engine; 255 is reserved for it.
    Unrecognized = 255, "unrecognized", "reason code not known to this version: a deny";
}

impl Reason {
    /// The reason a reader takes from the wire: the one with this number, or, for a number this
    /// version does not define, [`Reason::Unrecognized`] (a deny, not retryable). This is the
    /// forward-compatible rule of SPEC §9: an older scanner keeps reading the verdicts of a
    /// newer engine, and never takes an unknown code for an acceptance or a "retry".
    pub fn from_wire(code: u64) -> Reason {
        Reason::from_code(code).unwrap_or(Reason::Unrecognized)
    }

    /// Whether the token was accepted.
    pub fn is_accept(self) -> bool {
        self == Reason::Accepted
    }

    /// Whether the denial says nothing about the token, so the scanner should retry.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Reason::Busy | Reason::Unavailable | Reason::ReplayCapacity | Reason::RevocationsStale
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}
