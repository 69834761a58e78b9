//! Dunning: what to do about failed payments. Today: which decline bucket a failure falls
//! in (the ledger records it with the attempt).

pub mod decline;
