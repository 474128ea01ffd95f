//! `jarvis-desktop`: the node's UI in a native window (Tauri 2: WKWebView on macOS, WebKitGTK on
//! Linux), with a tray icon (voice state, push-to-talk, mute, start at login, quit) and a global
//! push-to-talk shortcut. Attaches to the running node of the home, or starts one (and stops it
//! again on Quit). Everything the window shows comes from the node's own UI and API.

use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use jarvis_desktop::{Link, NodeConfig, get, jarvis_command, post, tray_tooltip};
use serde_json::json;
use tauri::menu::{CheckMenuItem, Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager, WebviewUrl, WebviewWindowBuilder, WindowEvent};
use tauri_plugin_autostart::{MacosLauncher, ManagerExt};
use tauri_plugin_global_shortcut::{Code, GlobalShortcutExt, Modifiers, Shortcut, ShortcutState};

/// The Jarvis desktop app: your node's UI in a window, with a tray icon and push-to-talk.
#[derive(Debug, Parser)]
#[command(name = "jarvis-desktop", version, max_term_width = 100)]
struct Args {
    /// The node's home (default: JARVIS_HOME or the platform's data directory).
    #[arg(long, env = "JARVIS_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// The `jarvis` executable (default: next to this one, else on PATH).
    #[arg(long, value_name = "PATH")]
    jarvis: Option<PathBuf>,
    /// When no node runs, start it with these `jarvis up` arguments (e.g. `--up-arg=--no-voice`).
    #[arg(long = "up-arg", value_name = "ARG", allow_hyphen_values = true)]
    up_args: Vec<String>,
    /// Start in the tray without showing the window (how start at login opens it).
    #[arg(long)]
    minimized: bool,
}

/// The node the app shows, and the process if the app started it.
struct Node {
    link: Link,
    started: Mutex<Option<Child>>,
}

impl Node {
    /// Stops the node if this app started it (SIGINT: the node shuts down cleanly).
    fn stop_if_ours(&self) {
        let Ok(mut started) = self.started.lock() else {
            return;
        };
        if let Some(mut child) = started.take() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// One line of JSON on stdout per milestone, for scripts and tests.
fn say(event: serde_json::Value) {
    println!("{event}");
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let config = NodeConfig {
        jarvis: jarvis_command(args.jarvis.as_deref()),
        home: args.home.clone(),
        up_args: args.up_args.clone(),
    };
    let node = match config.running()? {
        Some(link) => {
            say(json!({ "event": "attached", "origin": link.origin }));
            Node {
                link,
                started: Mutex::new(None),
            }
        }
        None => {
            let log = node_log()?;
            let (link, child) = config.start(&log)?;
            say(
                json!({ "event": "started", "origin": link.origin, "pid": child.id(), "log": log }),
            );
            Node {
                link,
                started: Mutex::new(Some(child)),
            }
        }
    };
    let node = Arc::new(node);
    let push_to_talk = Shortcut::new(Some(Modifiers::CONTROL | Modifiers::SHIFT), Code::Space);
    let shortcut_node = Arc::clone(&node);
    let app = tauri::Builder::default()
        .plugin(
            tauri_plugin_global_shortcut::Builder::new()
                .with_handler(move |_app, shortcut, event| {
                    if shortcut == &push_to_talk && event.state() == ShortcutState::Pressed {
                        talk(&shortcut_node.link);
                    }
                })
                .build(),
        )
        .plugin(tauri_plugin_autostart::init(
            MacosLauncher::LaunchAgent,
            Some(vec!["--minimized"]),
        ))
        .setup({
            let node = Arc::clone(&node);
            let minimized = args.minimized;
            move |app| {
                setup(app.handle(), &node, push_to_talk, minimized)?;
                Ok(())
            }
        })
        .build(tauri::generate_context!())
        .context("starting the window system (on Linux: is DISPLAY set?)")?;
    app.run({
        let node = Arc::clone(&node);
        move |_app, event| {
            if let tauri::RunEvent::Exit = event {
                node.stop_if_ours();
            }
        }
    });
    Ok(())
}

/// Where the log of a node the app starts goes: the user's cache directory, readable by them
/// only (it holds transcripts at info level).
fn node_log() -> Result<PathBuf> {
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("jarvis");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir.join("desktop-node.log"))
}

fn talk(link: &Link) {
    if let Err(e) = post(link, "/v1/voice/talk", &json!({})) {
        eprintln!("push-to-talk: {e:#}");
    }
}

fn show_window(app: &AppHandle) {
    if let Some(window) = app.get_webview_window("main") {
        let _ = window.show();
        let _ = window.unminimize();
        let _ = window.set_focus();
    }
}

fn setup(app: &AppHandle, node: &Arc<Node>, push_to_talk: Shortcut, minimized: bool) -> Result<()> {
    let url = node
        .link
        .url
        .parse()
        .context("the node's UI address is not a URL")?;
    let loaded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let window = WebviewWindowBuilder::new(app, "main", WebviewUrl::External(url))
        .title("Jarvis")
        .inner_size(1180.0, 780.0)
        .min_inner_size(720.0, 480.0)
        .visible(!minimized)
        .on_page_load(move |_window, payload| {
            if payload.event() == tauri::webview::PageLoadEvent::Finished
                && !loaded.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                say(json!({ "event": "loaded" }));
            }
        })
        .build()
        .context("opening the window")?;
    // Closing the window keeps Jarvis in the tray, listening; Quit is in the tray menu.
    {
        let window = window.clone();
        window.clone().on_window_event(move |event| {
            if let WindowEvent::CloseRequested { api, .. } = event {
                api.prevent_close();
                let _ = window.hide();
            }
        });
    }

    // The voice state, at the top of the menu (where tooltips are not shown, as on Linux's
    // AppIndicator trays, this is how the tray says whether Jarvis listens).
    let state_item = MenuItem::with_id(app, "state", "Jarvis: starting…", false, None::<&str>)?;
    let show = MenuItem::with_id(app, "show", "Show Jarvis", true, None::<&str>)?;
    let talk_item = MenuItem::with_id(
        app,
        "talk",
        "Push to talk (Ctrl+Shift+Space)",
        true,
        None::<&str>,
    )?;
    let mute = CheckMenuItem::with_id(app, "mute", "Mute microphone", true, false, None::<&str>)?;
    let autostart = app.autolaunch();
    let at_login = CheckMenuItem::with_id(
        app,
        "login",
        "Start at login",
        true,
        autostart.is_enabled().unwrap_or(false),
        None::<&str>,
    )?;
    let quit = MenuItem::with_id(app, "quit", "Quit Jarvis", true, None::<&str>)?;
    let separator = PredefinedMenuItem::separator(app)?;
    let menu = Menu::with_items(
        app,
        &[
            &state_item,
            &show,
            &talk_item,
            &mute,
            &separator,
            &at_login,
            &quit,
        ],
    )?;
    let icon = app
        .default_window_icon()
        .cloned()
        .context("the app has no icon")?;
    let tray = TrayIconBuilder::with_id("jarvis")
        .icon(icon)
        .tooltip("Jarvis")
        .menu(&menu)
        .on_menu_event({
            let node = Arc::clone(node);
            let mute = mute.clone();
            let at_login = at_login.clone();
            move |app, event| match event.id().as_ref() {
                "show" => show_window(app),
                "talk" => talk(&node.link),
                "mute" => {
                    let muted = mute.is_checked().unwrap_or(false);
                    if let Err(e) = post(&node.link, "/v1/voice/mute", &json!({ "muted": muted })) {
                        eprintln!("mute: {e:#}");
                    }
                }
                "login" => {
                    let manager = app.autolaunch();
                    let wanted = at_login.is_checked().unwrap_or(false);
                    let result = if wanted {
                        manager.enable()
                    } else {
                        manager.disable()
                    };
                    if let Err(e) = result {
                        eprintln!("start at login: {e}");
                        let _ = at_login.set_checked(!wanted);
                    }
                }
                "quit" => app.exit(0),
                _ => {}
            }
        })
        .build(app)?;

    if let Err(e) = app.global_shortcut().register(push_to_talk) {
        // Another app may hold the shortcut; the window and tray still work.
        eprintln!("push-to-talk shortcut unavailable: {e}");
    }

    // The tray follows the voice state (and mute set elsewhere, e.g. in the window).
    let link = node.link.clone();
    std::thread::Builder::new()
        .name("tray-voice".into())
        .spawn(move || {
            let mut last = String::new();
            loop {
                let tooltip = match get(&link, "/v1/voice") {
                    Ok(voice) => {
                        let muted = voice
                            .get("muted")
                            .and_then(serde_json::Value::as_bool)
                            .unwrap_or(false);
                        let _ = mute.set_checked(muted);
                        tray_tooltip(&voice)
                    }
                    Err(_) => "Jarvis: the node is not running".to_owned(),
                };
                if tooltip != last {
                    let _ = tray.set_tooltip(Some(&tooltip));
                    let _ = state_item.set_text(&tooltip);
                    last = tooltip;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .context("starting the tray thread")?;
    Ok(())
}
