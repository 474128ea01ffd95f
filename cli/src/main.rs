//! `jarvis`: the command-line interface over the node library ([`jarvis_node`]): every clap
//! type ([`args`]), the printing, one module per group of commands. It parses, runs the
//! library's program or asks the running node over its local API, and prints; the node's
//! behaviour lives in the library. See `shared/design/cli.md` for the contract.

mod admin;
mod args;
mod client;
mod device;
mod listen;
mod models;

use std::process::ExitCode;

use clap::Parser;

use jarvis_home::Home;
use jarvis_node::{local_api, output::Output, up};

use crate::args::{Cli, Command, ModelsCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs to stderr; traces to an OTLP collector when OTEL_EXPORTER_OTLP_ENDPOINT is set
    // (flushed when `telemetry` is dropped, before the process ends).
    let telemetry = jarvis_telemetry::init(match &cli.command {
        Command::Gpu(_) => "jarvis-gpu",
        _ => "jarvis-node",
    });
    let code = match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    };
    drop(telemetry);
    code
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let out = Output { json: cli.json };
    let home = Home::locate(cli.home)?;
    match cli.command {
        Command::Admin(command) => admin::run(home, out, command),
        Command::Join(args) => device::join(home, out, args),
        Command::Devices(args) => device::devices(home, out, args.command),
        Command::Whoami => device::whoami(home, out),
        Command::Up(args) => up::run(home, out, args.into()),
        Command::Gpu(command) => device::gpu(home, out, command),
        Command::Status => client::status(&home, out),
        Command::Token { rotate: false } => {
            home.load()?;
            println!("{}", local_api::token(&home)?);
            Ok(())
        }
        Command::Token { rotate: true } => {
            home.load()?;
            let token = match local_api::running(&home)? {
                Some(client) => {
                    let answer = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(client.post("/v1/token/rotate", &serde_json::json!({})))?;
                    answer
                        .get("token")
                        .and_then(serde_json::Value::as_str)
                        .ok_or_else(|| anyhow::anyhow!("the node did not say the new token"))?
                        .to_owned()
                }
                None => local_api::new_token(&home)?,
            };
            println!("{token}");
            Ok(())
        }
        Command::Ui { print } => {
            home.load()?;
            let url = local_api::ui_url(&home)?;
            let opened = !print && !out.json && open_browser(&home, &url)?;
            out.emit(&serde_json::json!({ "url": url, "opened": opened }), || {
                if opened {
                    format!("Opened the Jarvis UI: {url}")
                } else {
                    format!("The Jarvis UI (the address carries your API token): {url}")
                }
            });
            Ok(())
        }
        Command::Ask {
            text,
            conversation,
            model,
        } => client::ask(&home, out, &text, conversation, model.as_deref()),
        Command::Listen(args) => listen::run(&home, out, args),
        Command::Conversations => client::conversations(&home, out),
        Command::Show { id } => client::show(&home, out, &id),
        Command::Models(ModelsCommand::List) => models::list(out),
        Command::Models(ModelsCommand::Pull {
            name,
            json_progress,
        }) => models::pull(out, name, json_progress),
        Command::Models(ModelsCommand::Import { path }) => models::import(out, &path),
    }
}

/// Opens `url` with the desktop's browser (`$BROWSER`, else the platform's opener); false when
/// there is none to ask (a server, CI). The URL carries the API token, and any local user can
/// read a process's arguments, so the browser is given a page in the home instead (mode 0600,
/// as Jupyter does) that sends it on to the URL.
fn open_browser(home: &Home, url: &str) -> anyhow::Result<bool> {
    let quoted = serde_json::to_string(url)?;
    let escaped = url.replace('&', "&amp;").replace('"', "&quot;");
    let page = format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>Jarvis</title>\n<meta http-equiv=\"refresh\" content=\"0;url={escaped}\">\n<script>location.replace({quoted})</script>\n<a href=\"{escaped}\">Open Jarvis</a>\n"
    );
    home.write_atomic(UI_OPEN_FILE, page.as_bytes(), true)?;
    let target = format!("file://{}", home.dir().join(UI_OPEN_FILE).display());
    let opener = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| {
            if cfg!(target_os = "macos") {
                "open".to_owned()
            } else {
                "xdg-open".to_owned()
            }
        });
    Ok(std::process::Command::new(opener)
        .arg(target)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success()))
}

/// The page `jarvis ui` hands the browser (it holds the token; readable only by this user).
const UI_OPEN_FILE: &str = "ui-open.html";
