//! `cityevents-auth admin create --email … [--name …] [--password-file F]` (or `--promote` for an
//! existing account): the only way to get an admin. There are no default users or passwords
//! anywhere; the password comes from a file or stdin, never from the command line (where `ps`
//! and shell history would keep it).

use std::io::Read as _;
use std::process::ExitCode;

use keel::app::Loaded;
use keel::app::clap::{Arg, ArgAction, ArgMatches, Command};

use crate::AuthConfig;

/// Longest password read from a file or stdin (the policy bounds it further).
const MAX_PASSWORD_INPUT: u64 = 4096;

/// The `admin` command and its `create` subcommand.
pub(crate) fn admin_command() -> Command {
    Command::new("admin").about("Manage administrators").subcommand_required(true).subcommand(
        Command::new("create")
            .about("Create an admin account, or with --promote make an existing account admin")
            .long_about(
                "Create an admin account; its password is read from --password-file or stdin (never the \
                 command line). Refused when the address already has an account: --promote makes that \
                 account admin instead, keeping its name and password (no password is read).",
            )
            .arg(Arg::new("email").long("email").required(true).value_name("EMAIL"))
            .arg(Arg::new("name").long("name").default_value("Administrator").value_name("NAME"))
            .arg(Arg::new("password_file").long("password-file").value_name("PATH"))
            .arg(
                Arg::new("promote")
                    .long("promote")
                    .action(ArgAction::SetTrue)
                    .conflicts_with_all(["password_file", "name"])
                    .help("Make the existing account with this address admin (its password stays)"),
            ),
    )
}

/// Runs `admin create` with the loaded configuration.
pub(crate) fn run_admin(args: &ArgMatches, loaded: Loaded<AuthConfig>) -> ExitCode {
    let Some(("create", args)) = args.subcommand() else {
        eprintln!("admin: use `admin create --email …`");
        return ExitCode::from(keel::app::exit::USAGE);
    };
    let email = args.get_one::<String>("email").cloned().unwrap_or_default();
    let name = args.get_one::<String>("name").cloned().unwrap_or_default();
    let promote = args.get_flag("promote");
    let password = if promote {
        String::new()
    } else {
        match read_password(args.get_one::<String>("password_file").map(String::as_str)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("admin create: {e}");
                return ExitCode::from(keel::app::exit::USAGE);
            }
        }
    };
    let action = if promote {
        crate::AdminAction::Promote
    } else {
        crate::AdminAction::Create { name: &name, password: &password }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("admin create: {e}");
            return ExitCode::from(keel::app::exit::FAILURE);
        }
    };
    match rt.block_on(crate::run_admin_create(&loaded, &email, action)) {
        Ok(done) => {
            let what = match done {
                crate::AdminCreated::Created(_) => "admin created",
                crate::AdminCreated::Promoted(_) => "promoted to admin",
                crate::AdminCreated::AlreadyAdmin(_) => "is already an admin; nothing changed",
            };
            println!("{email}: {what} (id {})", done.id());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("admin create: {e}");
            ExitCode::from(keel::app::exit::FAILURE)
        }
    }
}

fn read_password(file: Option<&str>) -> Result<String, String> {
    let mut raw = String::new();
    let read = match file {
        Some(path) => std::fs::File::open(path)
            .and_then(|f| f.take(MAX_PASSWORD_INPUT).read_to_string(&mut raw))
            .map_err(|e| format!("cannot read {path}: {e}")),
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("password for the new admin (input is not hidden; prefer --password-file): ");
            }
            std::io::BufRead::read_line(&mut std::io::stdin().lock().take(MAX_PASSWORD_INPUT), &mut raw)
                .map_err(|e| format!("cannot read the password from stdin: {e}"))
        }
    };
    read?;
    let password = raw.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err("no password given (stdin or --password-file)".into());
    }
    Ok(password)
}
