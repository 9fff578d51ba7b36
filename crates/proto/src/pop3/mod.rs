//! POP3: RFC 1939 with the RFC 2449, 2595, 3206, 5034 and 6856 extensions.

pub mod client;
pub mod command;
pub mod maildrop;
pub mod response;
pub mod server;

pub use command::{Command, CommandError};
pub use response::{RespCode, Status};
