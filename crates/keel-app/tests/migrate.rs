//! `migrate` on a service that declares no migrations, with or without the `sql` feature:
//! it says so and exits 0, so every service's release runs the same steps.

use std::process::ExitCode;

#[test]
fn a_service_without_migrations_says_so_and_succeeds() {
    for args in [vec!["svc", "migrate"], vec!["svc", "migrate", "status"]] {
        let code = keel_app::run_from(keel_app::Service::new(keel_app::build_info!()), args.clone());
        assert_eq!(format!("{code:?}"), format!("{:?}", ExitCode::SUCCESS), "{args:?}");
    }
}
