//! The desktop app for real: `jarvis-desktop` under Xvfb (a real X server, WebKitGTK rendering
//! into it) starts a real node, opens its UI in a native window, and the page inside it is live
//! (it follows the node's event stream with the token). A second start attaches to the running
//! node instead of starting another. The screen is saved to
//! `target/tmp/ui-screenshots/desktop-window.png` (ImageMagick `import -window root`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A virtual X display for the test, stopped when dropped.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Self {
        // A display number no other test (or run) holds.
        let mut n = 50 + std::process::id() % 400;
        while Path::new(&format!("/tmp/.X{n}-lock")).exists() {
            n += 1;
        }
        let child = Command::new("Xvfb")
            .arg(format!(":{n}"))
            .args(["-screen", "0", "1280x800x24", "-nolisten", "tcp"])
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb is not installed (scripts/test.sh installs it)");
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
        wait_for("the X server", Duration::from_secs(20), || {
            socket.exists().then_some(())
        });
        Self {
            child,
            display: format!(":{n}"),
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn jarvis_bin() -> PathBuf {
    let path = assert_cmd::cargo::cargo_bin("jarvis");
    assert!(
        path.exists(),
        "{} is not built: build the workspace first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The app's JSON lines, read on a thread so a wait can time out.
fn lines(stdout: ChildStdout) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    rx
}

fn next_event(rx: &mpsc::Receiver<Value>, event: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if v["event"] == event => return v,
            Ok(_) => {}
            Err(e) => panic!("no `{event}` from jarvis-desktop: {e}"),
        }
    }
}

/// The number of clients following the node's event stream (`jarvis_event_streams`).
fn event_streams(origin: &str, token: &str) -> f64 {
    let addr = origin.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return 0.0;
    };
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix("jarvis_event_streams "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Pixels of the UI's accent colour (#4f6bff: the Send button, the selected screen) and the
/// number of distinct colours in a screenshot.
fn analyse(png_path: &Path) -> (usize, usize) {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let mut accent = 0;
    let mut colours = std::collections::HashSet::new();
    for px in buf[..info.buffer_size()].chunks(channels) {
        let (r, g, b) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
        if (r - 0x4f).abs() < 12 && (g - 0x6b).abs() < 12 && (b - 0xff).abs() < 12 {
            accent += 1;
        }
        colours.insert((r, g, b));
    }
    (accent, colours.len())
}

fn desktop(home: &Path, dir: &Path, display: &str) -> Child {
    desktop_on(home, dir, display, None)
}

/// [`desktop`], on the D-Bus session bus at `bus` (for the tray).
fn desktop_on(home: &Path, dir: &Path, display: &str, bus: Option<&str>) -> Child {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("jarvis-desktop"));
    match bus {
        Some(bus) => cmd.env("DBUS_SESSION_BUS_ADDRESS", bus),
        None => cmd.env_remove("DBUS_SESSION_BUS_ADDRESS"),
    };
    cmd.env("DISPLAY", display)
        // The app's own settings (start at login) and the node's, inside the test's folder.
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env_remove("JARVIS_HOME")
        .env("JARVIS_PASSPHRASE", "pw")
        .env("JARVIS_KDF_WORK_FACTOR", "10")
        .env("JARVIS_MODELS", "/nonexistent/jarvis-models")
        .arg("--home")
        .arg(home)
        .arg("--jarvis")
        .arg(jarvis_bin())
        .args([
            "--up-arg=--no-voice",
            "--up-arg=--no-mdns",
            "--up-arg=--api",
            "--up-arg=127.0.0.1:0",
            "--up-arg=--listen",
            "--up-arg=/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn token(home: &Path) -> String {
    let out = Command::new(jarvis_bin())
        .arg("--home")
        .arg(home)
        .arg("token")
        .env_remove("JARVIS_HOME")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_app_starts_the_node_and_shows_its_live_ui_in_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let x = Xvfb::start();

    // No node running: the app starts one (a personal one, on this empty home).
    let mut app = desktop(&home, dir.path(), &x.display);
    let events = lines(app.stdout.take().unwrap());
    let started = next_event(&events, "started");
    let origin = started["origin"].as_str().unwrap().to_owned();
    let node_pid = started["pid"].as_u64().unwrap();
    // Stopped (SIGINT: cleanly) however the test ends.
    struct StopNode(u64);
    impl Drop for StopNode {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.to_string()])
                .status();
        }
    }
    let _node = StopNode(node_pid);
    next_event(&events, "loaded");
    let token = token(&home);
    wait_for(
        "the window's page to follow the node's events",
        Duration::from_secs(30),
        || (event_streams(&origin, &token) >= 1.0).then_some(()),
    );
    // Let it paint, then look at the screen.
    std::thread::sleep(Duration::from_secs(2));
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("desktop-window.png");
    let status = Command::new("import")
        .args(["-display", &x.display, "-window", "root"])
        .arg(&shot)
        .status()
        .expect("ImageMagick is not installed (scripts/test.sh installs it)");
    assert!(status.success());
    let (accent, colours) = analyse(&shot);
    assert!(
        accent > 2_000,
        "the UI is on screen (its accent colour: {accent} pixels; see {})",
        shot.display()
    );
    assert!(
        colours > 50,
        "a rendered page, not a blank window: {colours} colours"
    );

    // The app goes; the node it started stays up until Quit, so the next start attaches.
    let _ = app.kill();
    let _ = app.wait();
    wait_for("the page to disconnect", Duration::from_secs(30), || {
        (event_streams(&origin, &token) < 1.0).then_some(())
    });
    let mut again = desktop(&home, dir.path(), &x.display);
    let events = lines(again.stdout.take().unwrap());
    let attached = next_event(&events, "attached");
    assert_eq!(attached["origin"], origin.as_str());
    next_event(&events, "loaded");
    wait_for(
        "the second window's page to follow the node",
        Duration::from_secs(30),
        || (event_streams(&origin, &token) >= 1.0).then_some(()),
    );
    let _ = again.kill();
    let _ = again.wait();
}

/// A private D-Bus session bus (`dbus-daemon`), stopped when dropped.
struct SessionBus {
    pid: String,
    address: String,
}

impl SessionBus {
    fn start() -> Self {
        let out = Command::new("dbus-daemon")
            .args(["--session", "--fork", "--print-address=1", "--print-pid=1"])
            .output()
            .expect("dbus-daemon is not installed (scripts/test.sh installs dbus)");
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let address = lines.next().unwrap().to_owned();
        let pid = lines.next().unwrap().to_owned();
        Self { pid, address }
    }

    /// `gdbus call` on this bus; its output.
    fn call(&self, dest: &str, path: &str, method: &str, args: &[&str]) -> String {
        self.try_call(dest, path, method, args)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn try_call(
        &self,
        dest: &str,
        path: &str,
        method: &str,
        args: &[&str],
    ) -> Result<String, String> {
        let out = Command::new("gdbus")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .args([
                "call",
                "--session",
                "--dest",
                dest,
                "--object-path",
                path,
                "--method",
                method,
                "--",
            ])
            .args(args)
            .output()
            .expect("gdbus is not installed (scripts/test.sh installs libglib2.0-bin)");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8(out.stdout).unwrap())
    }

    /// The bus names of the process `pid` (a GTK app has several connections).
    fn names_of(&self, pid: u32) -> Vec<String> {
        let names = self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.ListNames",
            &[],
        );
        names
            .split('\'')
            .filter(|n| n.starts_with(':'))
            // Names come and go (each `gdbus` is a connection of its own).
            .filter(|n| {
                self.try_call(
                    "org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.GetConnectionUnixProcessID",
                    &[n],
                )
                .is_ok_and(|answer| answer.contains(&format!("uint32 {pid},")))
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

/// The id of the menu item labelled `label` in a `com.canonical.dbusmenu.GetLayout` answer
/// (`…<(4, {…, 'label': <'Mute microphone'>}, @av [])>…`).
fn menu_item(layout: &str, label: &str) -> String {
    let at = layout
        .find(&format!("'label': <'{label}'>"))
        .unwrap_or_else(|| panic!("no menu item {label:?} in {layout}"));
    let start = layout[..at].rfind("<(").unwrap() + 2;
    layout[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect()
}

/// Whether `pid` runs (a zombie, waiting for a parent that may never reap it, does not).
fn process_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// The tray, as a desktop environment sees it: the app's StatusNotifierItem and its menu on
/// the session bus (what GNOME's AppIndicator extension and KDE show). Its Mute item mutes the
/// node's microphone, and Quit ends the app and the node it started.
#[test]
fn the_tray_menu_mutes_the_microphone_and_quits_over_dbus() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let x = Xvfb::start();
    let bus = SessionBus::start();
    let mut app = desktop_on(&home, dir.path(), &x.display, Some(&bus.address));
    let events = lines(app.stdout.take().unwrap());
    let started = next_event(&events, "started");
    let origin = started["origin"].as_str().unwrap().to_owned();
    let node_pid = started["pid"].as_u64().unwrap();
    struct StopBoth(u64, Child);
    impl Drop for StopBoth {
        fn drop(&mut self) {
            let _ = self.1.kill();
            let _ = self.1.wait();
            let _ = Command::new("kill")
                .args(["-INT", &self.0.to_string()])
                .status();
        }
    }
    let app_pid = app.id();
    let mut guard = StopBoth(node_pid, app);
    next_event(&events, "loaded");
    let token = token(&home);

    let item = "/org/ayatana/NotificationItem/tray_icon_tray_app_jarvis";
    let (owner, properties) = wait_for("the tray item on the bus", Duration::from_secs(30), || {
        bus.names_of(app_pid).into_iter().find_map(|name| {
            bus.try_call(
                &name,
                item,
                "org.freedesktop.DBus.Properties.GetAll",
                &["org.kde.StatusNotifierItem"],
            )
            .ok()
            .map(|p| (name, p))
        })
    });
    assert!(properties.contains("'Status': <'Active'>"), "{properties}");
    let menu = format!("{item}/Menu");
    let layout = bus.call(
        &owner,
        &menu,
        "com.canonical.dbusmenu.GetLayout",
        &["0", "-1", "[]"],
    );
    for label in [
        "Show Jarvis",
        "Push to talk (Ctrl+Shift+Space)",
        "Start at login",
    ] {
        menu_item(&layout, label);
    }

    let muted = || {
        let addr = origin.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).ok()?;
        write!(
            stream,
            "GET /v1/voice HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let body: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1)?).ok()?;
        body["muted"].as_bool()
    };
    assert_eq!(muted(), Some(false));
    // The menu's first line says what voice is doing (here: off, `--no-voice`).
    wait_for(
        "the tray to say the voice state",
        Duration::from_secs(10),
        || {
            let layout = bus.call(
                &owner,
                &menu,
                "com.canonical.dbusmenu.GetLayout",
                &["0", "-1", "[]"],
            );
            layout
                .contains("'label': <'Jarvis: voice off'>")
                .then_some(())
        },
    );
    let click = |id: &str| {
        bus.call(
            &owner,
            &menu,
            "com.canonical.dbusmenu.Event",
            &[id, "clicked", "<int32 0>", "0"],
        );
    };
    click(&menu_item(&layout, "Mute microphone"));
    wait_for(
        "the tray's Mute to mute the node",
        Duration::from_secs(10),
        || (muted() == Some(true)).then_some(()),
    );
    // The item shows the check, and the first line says so (the thread polls once a second).
    let layout = wait_for("the tray to show it", Duration::from_secs(10), || {
        let layout = bus.call(
            &owner,
            &menu,
            "com.canonical.dbusmenu.GetLayout",
            &["0", "-1", "[]"],
        );
        (layout.contains(
            "'toggle-state': <1>, 'toggle-type': <'checkmark'>, 'label': <'Mute microphone'>",
        ) && layout.contains("'label': <'Jarvis: microphone muted'>"))
        .then_some(layout)
    });

    click(&menu_item(&layout, "Quit Jarvis"));
    wait_for("Quit to end the app", Duration::from_secs(20), || {
        guard.1.try_wait().ok().flatten()
    });
    wait_for(
        "Quit to stop the node the app started",
        Duration::from_secs(20),
        || (!process_alive(node_pid)).then_some(()),
    );
}
