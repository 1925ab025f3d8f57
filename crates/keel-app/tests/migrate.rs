//! `migrate` and `audit` on a service that declares no migrations (no database), with or
//! without the `sql` feature: refused as a usage error, exit 64.

use std::process::ExitCode;

#[test]
fn a_service_without_a_database_refuses_migrate_and_audit() {
    let usage = ExitCode::from(keel_app::exit::USAGE);
    for args in [vec!["svc", "migrate"], vec!["svc", "migrate", "status"]] {
        let code = keel_app::run_from(keel_app::Service::new(keel_app::build_info!()), args.clone());
        assert_eq!(format!("{code:?}"), format!("{usage:?}"), "{args:?}");
    }
    if cfg!(all(feature = "sql", feature = "security")) {
        let code = keel_app::run_from(keel_app::Service::new(keel_app::build_info!()), ["svc", "audit", "verify"]);
        assert_eq!(format!("{code:?}"), format!("{usage:?}"));
    }
}
