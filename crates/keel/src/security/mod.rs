//! Security building blocks. For now: PII masking ([`mask`]), which the log formatter applies to
//! every line.

pub mod mask;
