//! [`Secret`]: the workspace's one credential type lives in `pobox-proto`
//! (the bottom crate, so the POP3 codec, this crate and the fetcher share
//! it); re-exported here so `pobox_auth::secret::Secret` keeps working.

pub use pobox_proto::secret::Secret;
