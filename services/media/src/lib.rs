//! Pictures people upload: event covers and avatars.
//!
//! An upload is checked and rebuilt before anything is stored ([`process`]):
//!
//! * **type by content**: the bytes must be a JPEG, PNG or WebP whatever the file is called
//!   or the client says it is;
//! * **bounded**: at most [`Limits::max_bytes`] in, at most [`Limits::max_side`] pixels a side
//!   and [`Limits::max_pixels`] in all as the header declares them, checked before the pixels
//!   are decoded (a few kilobytes can declare gigapixels), and the decoder's allocations capped;
//! * **clean**: decoded to pixels (turned upright as its EXIF orientation says) and encoded
//!   again as a new JPEG, so nothing of the original file (EXIF, GPS position, comments, colour
//!   profiles, trailing data) reaches anyone; transparency is flattened onto white;
//! * **resized**: one JPEG per [`Variant`], cropped to fill it;
//! * **addressed by content**: the variants' SHA-256 names them ([`Processed::hash`]), so a
//!   URL never changes meaning and can be cached for a year ([`CACHE_CONTROL`]).
//!
//! Decoding is CPU work: [`Pipeline`] runs it on the blocking pool, a bounded number at once.

#![forbid(unsafe_code)]

mod config;
mod pipeline;
mod serve;

pub use config::*;
pub use pipeline::*;
pub use serve::*;
