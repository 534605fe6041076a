//! Automatic recovery, the parts without IO: how long to wait, which address next, which
//! errors are worth reconnecting for, and the topology to re-declare. The driver
//! (`driver/recovery.rs`) executes them.

mod addresses;
pub(crate) mod backoff;
mod options;
pub(crate) mod topology;

pub use addresses::Address;
pub(crate) use addresses::AddressRotation;
pub use options::{
    AddressOrder, CredentialsProvider, RecoveryOptions, TopologyFilter, TopologyItem, WhileDisconnected,
};
