//! A maildrop a session holds.
