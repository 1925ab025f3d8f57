//! Names that must live for the whole program (`&'static str`), made once per distinct name.
//!
//! A service's name is wanted as `&'static str` in a few places: clap's command name, and the
//! request span's `service` field, where an `Arc<str>` would put a reference count shared by
//! every worker thread in the route axum clones per request. A process serves a handful of
//! services, so interning keeps a handful of names however often a service is started.

use std::sync::{Mutex, PoisonError};

/// The program's copy of `name`, made on first use.
pub fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.iter().find(|n| **n == name) {
        return known;
    }
    let new: &'static str = Box::leak(name.into());
    names.push(new);
    new
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_copy_per_name() {
        let a = super::intern("intern-test-a");
        assert!(std::ptr::eq(a, super::intern(&String::from("intern-test-a"))));
        assert_eq!(super::intern("intern-test-b"), "intern-test-b");
        assert!(!std::ptr::eq(a, super::intern("intern-test-b")));
    }
}
