//! Signature schemes that are not vendors: Standard Webhooks, Svix (its branded headers),
//! and a configurable HMAC for senders that sign with a shared secret. Vendors whose
//! webhooks use one of these (Polar, Appstle) delegate to it.

pub(crate) mod generic_hmac;
pub(crate) mod standard;
pub(crate) mod svix;
