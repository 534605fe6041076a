//! Class `tx` (90): transactions.

use super::macros::method_structs;

method_structs! {
    /// Puts the channel in transactional mode.
    Select {}
    /// Transactional mode is on.
    SelectOk {}
    /// Commits the current transaction.
    Commit {}
    /// Committed.
    CommitOk {}
    /// Abandons the current transaction.
    Rollback {}
    /// Rolled back.
    RollbackOk {}
}
