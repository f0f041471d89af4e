//! gatehouse's sans-IO verification core: no sockets, no files, no clock. `now` is an argument
//! and every effect (marking a token used) is a value the caller performs. The shell
//! (`gatehouse-engine`'s `server`) drives it; the compiler keeps it from reaching back.

mod cache;
mod clock;
mod engine;
mod fence;
mod mdoc;
mod policy;
mod registry;
mod replay;
mod revocation;

pub use cache::{CachedCredential, IssuerCache};
pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    BatchMode, BatchStats, Batching, Engine, EngineConfig, EngineError, Item, Prepared, Stats,
    DEFAULT_BATCH_FROM, MB_FROM, SUSPECT_SECS,
};
pub use fence::{restart_fence, Life, LifeBook, Observed};
pub use mdoc::{mdoc_document_id, mdoc_replay_id, Disclosed, MdocCache, MdocItem, MdocRevocations};
pub use policy::{decide, decide_mdoc, military_discount_eligible};
pub use registry::{
    ConfigError, IssuerKey, MdocPolicy, RevocationKey, Role, Scanner, ScannerRegistry, TrustList,
    DEFAULT_GATE_ADMITS,
};
pub use replay::{Entry, Mark, MarkOutcome, MarkRequest, ReplayGuard};
pub use revocation::{compact, short_hex, RevocationError, RevocationState, Revocations};
