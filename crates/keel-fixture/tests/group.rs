//! Several services in one process (`keel::app::Group`), service commands
//! (`Service::command`), `run_from` and launcher defaults (`Service::config_defaults`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use keel::app::{Group, GroupError, Loader, clap};
use keel::config::Profile;

fn loader(name: &str, env: &[(&str, &str)]) -> Loader {
    let prefix = name.to_ascii_uppercase().replace('-', "_");
    let mut vars = vec![(format!("{prefix}__HTTP__PORT"), "0".to_owned())];
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Loader::new(name, Profile::Test).env(vars)
}

#[tokio::test]
async fn a_group_starts_every_member_with_its_own_config_and_stops_them() {
    let group = Group::new(keel::build_info!())
        .add(keel_fixture::service().name("svc-a"), loader("svc-a", &[("SVC_A__APP__GREETING", "from a")]))
        .add(keel_fixture::service().name("svc-b"), loader("svc-b", &[("SVC_B__APP__GREETING", "from b")]));
    assert_eq!(group.names(), ["svc-a", "svc-b"]);
    let started = Arc::new(Mutex::new(Vec::new()));
    let seen = started.clone();
    let running = group
        .on_started(move |r| seen.lock().unwrap().extend(r.iter().map(|r| r.name().to_owned())))
        .start()
        .await
        .unwrap();
    assert_eq!(*started.lock().unwrap(), ["svc-a", "svc-b"]);
    let http = common::client();
    for (r, greeting) in running.iter().zip(["from a", "from b"]) {
        let body: serde_json::Value =
            http.get(format!("http://{}/hello", r.http_addr())).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["message"], greeting, "{}", r.name());
        let metrics = http.get(format!("http://{}/metrics", r.management_addr())).send().await.unwrap();
        let text = metrics.text().await.unwrap();
        assert!(text.contains(&format!("service=\"{}\"", r.name())), "each member has its own registry");
    }
    for r in running.into_iter().rev() {
        r.shutdown(std::future::pending()).await.unwrap();
    }
}

#[tokio::test]
async fn every_members_config_problems_are_reported_before_anything_starts() {
    let errors = Group::new(keel::build_info!())
        .add(keel_fixture::service().name("bad-a"), loader("bad-a", &[("BAD_A__HTTP__PORTT", "1")]))
        .add(keel_fixture::service().name("good"), loader("good", &[]))
        .add(keel_fixture::service().name("bad-b"), loader("bad-b", &[("BAD_B__LOG__FORMAT", "xml")]))
        .start()
        .await
        .unwrap_err();
    let services: Vec<_> = errors
        .iter()
        .map(|e| match e {
            GroupError::Config { service, .. } => service.as_str(),
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(services, ["bad-a", "bad-b"]);
}

#[tokio::test]
async fn a_member_that_cannot_start_stops_the_ones_already_started() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let errors = Group::new(keel::build_info!())
        .add(keel_fixture::service().name("first"), loader("first", &[]))
        .add(
            keel_fixture::service().name("second"),
            loader("second", &[("SECOND__HTTP__PORT", &port), ("SECOND__HTTP__ADDR", "127.0.0.1")]),
        )
        .start()
        .await
        .unwrap_err();
    assert!(matches!(&errors[..], [GroupError::Start { service, .. }] if service == "second"), "{errors:?}");
}

fn greet_service(seen: Arc<Mutex<Option<String>>>) -> keel::Service<keel_fixture::FixtureConfig> {
    keel_fixture::service()
        .name("greeter")
        .config_defaults([("GREETER__APP__GREETING", "from the launcher"), ("OTHER__APP__GREETING", "ignored")])
        .command(
            clap::Command::new("greet").about("Print a greeting").arg(clap::Arg::new("who").required(true)),
            move |args, loaded| {
                let who = args.get_one::<String>("who").cloned().unwrap_or_default();
                *seen.lock().unwrap() = Some(format!("{} {who}", loaded.config.app.greeting));
                ExitCode::from(3)
            },
        )
}

#[test]
fn a_service_command_runs_with_the_loaded_config_and_its_exit_code() {
    let seen = Arc::new(Mutex::new(None));
    let code = keel::app::run_from(greet_service(seen.clone()), ["greeter", "greet", "world"]);
    assert_eq!(format!("{code:?}"), format!("{:?}", ExitCode::from(3)));
    assert_eq!(seen.lock().unwrap().as_deref(), Some("from the launcher world"));
}

#[test]
fn a_bad_command_line_exits_64_without_running_anything() {
    let seen = Arc::new(Mutex::new(None));
    for args in [&["greeter", "greet"][..], &["greeter", "nonsense"][..]] {
        let code = keel::app::run_from(greet_service(seen.clone()), args.iter().copied());
        assert_eq!(format!("{code:?}"), format!("{:?}", ExitCode::from(keel::app::exit::USAGE)), "{args:?}");
    }
    assert!(seen.lock().unwrap().is_none());
}
