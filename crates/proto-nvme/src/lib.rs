//! NVMe over Fabrics codec (TCP transport).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decode;
mod digest;
mod error;
mod pdu;
mod queue;
mod status;
mod wire;

pub use decode::*;
pub use digest::*;
pub use error::*;
pub use pdu::*;
pub use queue::*;
pub use status::*;

// Referenced by modules still to come.
#[allow(unused_imports)]
use wire::*;
