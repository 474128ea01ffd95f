//! Several relay instances over one PostgreSQL database (the fleet, #21), with real `jarvis-relay`
//! and `jarvis up` processes on loopback QUIC and a throwaway PostgreSQL cluster.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{
    Running, approve_offline, enrol_relay_named, jarvis, node_up, ok, sample, say, scrape,
    start_relay_with, texts, wait_for,
};
use jarvis_relay::pg::Pg;
use jarvis_relay::roster::Roster;

/// The same invite used on two machines, each dialling a different instance at the same moment:
/// the claim is one row in the shared database, so exactly one of them is admitted, the other
/// is told the invite was already claimed, and the roster every instance reads has both claims.
#[test]
fn an_invite_claimed_through_two_instances_at_once_is_accepted_once() {
    let cluster = common::postgres::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let admin = d.join("admin");
    ok(&admin, &["admin", "init", "--org", "acme"]);
    let store = d.join("store-url");
    std::fs::write(&store, cluster.url("postgres")).unwrap();
    let store = store.to_str().unwrap();
    let mut instances = Vec::new();
    for name in ["relay-1", "relay-2"] {
        let home = d.join(name);
        enrol_relay_named(&admin, &home, name);
        instances.push(start_relay_with(&home, &["--store-file", store]));
    }
    let token = ok(&admin, &["admin", "invite", "alice"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let homes: Vec<_> = ["laptop", "mallory-pc"]
        .iter()
        .map(|device| {
            let home = d.join(device);
            ok(&home, &["join", &token, "--device-name", device]);
            home
        })
        .collect();

    // Both at once, each to its own instance.
    let nodes: Vec<_> = std::thread::scope(|s| {
        let started: Vec<_> = homes
            .iter()
            .zip(&instances)
            .map(|(home, (_, address, _))| {
                s.spawn(move || {
                    node_up(
                        jarvis(home),
                        &[
                            "--listen",
                            "/ip4/127.0.0.1/udp/0/quic-v1",
                            "--peer",
                            address,
                        ],
                    )
                })
            })
            .collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });

    // One is refused and told why; the other is the one device the fleet admitted.
    let refused_by_its_relay = |home: &std::path::Path| -> bool {
        ok(home, &["status"])["dialing"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["error"].as_str())
            .any(|e| e.contains("already claimed"))
    };
    let devices = |instances: &[std::path::PathBuf]| -> u64 {
        instances
            .iter()
            .map(|h| {
                common::json_ok(common::relay_cmd(h), &["status"])["devices"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    let relay_homes = [d.join("relay-1"), d.join("relay-2")];
    let refused = wait_for("one claimant to be refused and the other admitted", || {
        let refused: Vec<bool> = homes.iter().map(|h| refused_by_its_relay(h)).collect();
        (refused.iter().filter(|r| **r).count() == 1 && devices(&relay_homes) == 1)
            .then_some(refused)
    });
    // And it stays so: the refused one redials and is not let in on a later try either.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(devices(&relay_homes), 1, "refused: {refused:?}");

    // The roster both instances share: one accepted claim and one refused, for one invite.
    let roster = Roster::postgres(Pg::connect(&cluster.url("postgres"), 1).unwrap());
    let claims = wait_for("the refused claim to be on record", || {
        let (_, claims) = roster.report(|_| false).unwrap();
        (claims.len() == 2).then_some(claims)
    });
    assert_eq!(claims[0].invite, claims[1].invite);
    assert!(claims[0].accepted && !claims[1].accepted, "{claims:?}");
    assert_ne!(claims[0].user_key, claims[1].user_key);
    drop(nodes);
}

/// A running instance: its process, the address devices dial, its metrics address, its home.
struct Instance {
    running: Running,
    address: String,
    metrics: String,
    home: PathBuf,
}

/// Org acme with alice's laptop and phone, and `n` relay instances over the cluster's database.
/// The devices know no relay of the org (each test says where they connect).
fn fleet(d: &Path, url: &str, n: usize) -> (PathBuf, [PathBuf; 2], Vec<Instance>) {
    fleet_with(d, url, n, &[], false)
}

/// [`fleet`], the instances started with `extra` arguments, and, when `recorded`, every
/// instance's address recorded with `admin relays add` before the invite, so the devices'
/// bundles carry them all.
fn fleet_with(
    d: &Path,
    url: &str,
    n: usize,
    extra: &[&str],
    recorded: bool,
) -> (PathBuf, [PathBuf; 2], Vec<Instance>) {
    let admin = d.join("admin");
    ok(&admin, &["admin", "init", "--org", "acme"]);
    let store = d.join("store-url");
    std::fs::write(&store, url).unwrap();
    let instances = (1..=n)
        .map(|i| {
            let home = d.join(format!("relay-{i}"));
            enrol_relay_named(&admin, &home, &format!("relay-{i}"));
            let mut args = vec!["--store-file", store.to_str().unwrap()];
            args.extend(extra);
            let (running, address, metrics) = start_relay_with(&home, &args);
            if recorded {
                ok(&admin, &["admin", "relays", "add", &address]);
            }
            Instance {
                running,
                address,
                metrics,
                home,
            }
        })
        .collect();
    let token = ok(&admin, &["admin", "invite", "alice"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let laptop = d.join("laptop");
    ok(&laptop, &["join", &token, "--device-name", "laptop"]);
    let phone = d.join("phone");
    approve_offline(&laptop, &phone, "phone");
    (admin, [laptop, phone], instances)
}

fn up_at(home: &Path, relay: &str) -> Running {
    node_up(
        jarvis(home),
        &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--peer", relay],
    )
}

/// The user's laptop on instance 1, the phone on instance 2 (each knows only its own): what the
/// laptop writes reaches the phone through the database and instance 2's announcement
/// listener, not only on the next resync, and instance 2 counts the announcements it heard.
#[test]
fn devices_on_two_instances_sync_live_through_the_database() {
    let cluster = common::postgres::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (_admin, [laptop, phone], instances) = fleet(dir.path(), &cluster.url("postgres"), 2);
    let _a = up_at(&laptop, &instances[0].address);
    let _b = up_at(&phone, &instances[1].address);
    let conversation = say(&laptop, &["the first note"]);
    wait_for("the phone to get the first note", || {
        (texts(&phone, &conversation) == ["the first note"]).then_some(())
    });
    let mut sent = vec!["the first note".to_owned()];
    let mut took = Vec::new();
    for i in 0..5 {
        let text = format!("live note {i}");
        let at = Instant::now();
        say(&laptop, &[&text, "--conversation", &conversation]);
        sent.push(text);
        wait_for("the phone to get the note", || {
            (texts(&phone, &conversation) == sent).then_some(())
        });
        took.push(at.elapsed());
    }
    took.sort();
    eprintln!("laptop on instance 1 → phone on instance 2: {took:?}");
    let heard = sample(
        &scrape(&instances[1].metrics),
        "jarvis_relay_announcements_heard_total",
    )
    .unwrap_or(0.0);
    assert!(heard >= 5.0, "instance 2 heard {heard} announcements");
    drop(instances);
}

fn relay_status(home: &Path) -> serde_json::Value {
    common::json_ok(common::relay_cmd(home), &["status"])
}

/// The admin publishes a revocation to instance 1 only; the revoked phone is connected to
/// instance 2 only. The revocation goes through the shared table and its notification, and
/// instance 2 disconnects the phone within 5 s.
#[test]
fn a_revocation_published_to_one_instance_disconnects_the_device_from_another() {
    let cluster = common::postgres::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (admin, [laptop, phone], instances) = fleet(dir.path(), &cluster.url("postgres"), 2);
    let _a = up_at(&laptop, &instances[0].address);
    let _b = up_at(&phone, &instances[1].address);
    for instance in &instances {
        wait_for("each instance to admit its device", || {
            (relay_status(&instance.home)["devices"] == 1).then_some(())
        });
    }
    ok(&admin, &["admin", "relays", "add", &instances[0].address]);
    let phone_id = ok(&phone, &["whoami"])["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked_at = Instant::now();
    let revoked = ok(&admin, &["admin", "revoke", "--device", &phone_id]);
    assert_eq!(revoked["published_to_relays"], true, "{revoked}");
    wait_for("instance 2 to drop the phone", || {
        (relay_status(&instances[1].home)["devices"] == 0).then_some(())
    });
    let took = revoked_at.elapsed();
    eprintln!("revoked at instance 1 → phone dropped by instance 2: {took:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    assert_eq!(relay_status(&instances[1].home)["revocations"], 1);
    // The laptop, on instance 1, stays.
    assert_eq!(relay_status(&instances[0].home)["devices"], 1);
    // And the phone's redials to instance 2 are refused from then on.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(relay_status(&instances[1].home)["devices"], 0);
}

/// The org relay a device uses now (its `status`: the relay entry not in reserve, connected).
fn relay_in_use(home: &Path) -> Option<String> {
    ok(home, &["status"])["dialing"]
        .as_array()?
        .iter()
        .find(|d| d["kind"] == "relay" && d["standby"] == false && d["connected"] == true)
        .and_then(|d| d["address"].as_str().map(str::to_owned))
}

/// The relay's `last_refusal` as the device shows it.
fn last_refusal(home: &Path) -> Option<String> {
    ok(home, &["status"])["peers"]
        .as_array()?
        .iter()
        .filter_map(|p| p["last_refusal"].as_str().map(str::to_owned))
        .next()
}

/// Both devices know both instances (the org's relays, from the invite) and each uses the one
/// its id prefers. The instance the laptop uses is `kill -9`ed in the middle of a burst: the
/// laptop moves to the other within 10 s, and the phone ends with every message. Then
/// PostgreSQL itself goes down in the middle of a burst: the relays refuse what they cannot
/// store (the device shows why) and carry on, with no restart of their own, once it is back.
#[test]
fn an_instance_killed_mid_burst_and_a_database_restart_lose_nothing() {
    let cluster = common::postgres::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (_admin, [laptop, phone], mut instances) =
        fleet_with(dir.path(), &cluster.url("postgres"), 2, &[], true);
    let listen = ["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"];
    let _a = node_up(jarvis(&laptop), &listen);
    let _b = node_up(jarvis(&phone), &listen);
    let used = wait_for("the laptop to use one instance", || relay_in_use(&laptop));
    let phone_used = wait_for("the phone to use one instance", || relay_in_use(&phone));
    eprintln!("laptop on {used}, phone on {phone_used}");
    let victim = instances.iter().position(|i| i.address == used).unwrap();
    let survivor = instances[1 - victim].address.clone();

    let conversation = say(&laptop, &["message 0"]);
    let mut sent = vec!["message 0".to_owned()];
    for i in 1..40 {
        if i == 20 {
            // Mid-burst, no clean shutdown.
            instances[victim].running.0.kill().unwrap();
            instances[victim].running.0.wait().unwrap();
            let killed = Instant::now();
            let watched = laptop.clone();
            let survivor = survivor.clone();
            let moved = std::thread::spawn(move || {
                wait_for("the laptop to move to the other instance", || {
                    (relay_in_use(&watched).as_deref() == Some(survivor.as_str()))
                        .then(|| killed.elapsed())
                })
            });
            for j in 20..40 {
                let text = format!("message {j}");
                say(&laptop, &[&text, "--conversation", &conversation]);
                sent.push(text);
            }
            let took = moved.join().unwrap();
            eprintln!("kill -9 of the laptop's instance → the laptop on the other: {took:?}");
            assert!(took < std::time::Duration::from_secs(10), "{took:?}");
            break;
        }
        let text = format!("message {i}");
        say(&laptop, &[&text, "--conversation", &conversation]);
        sent.push(text);
    }
    wait_for("the phone to have every message", || {
        (texts(&phone, &conversation) == sent).then_some(())
    });

    // PostgreSQL goes down mid-burst: the relay says why it cannot store, and acknowledges
    // nothing it did not store.
    cluster.stop();
    for i in 40..50 {
        let text = format!("message {i}");
        say(&laptop, &[&text, "--conversation", &conversation]);
        sent.push(text);
    }
    let refusal = wait_for("the laptop to be told the relay cannot store", || {
        last_refusal(&laptop).filter(|r| r.contains("cannot store"))
    });
    eprintln!("while the database is down the laptop shows: {refusal}");
    assert_ne!(
        texts(&phone, &conversation),
        sent,
        "nothing new got through"
    );
    cluster.resume();
    for i in 50..55 {
        let text = format!("message {i}");
        say(&laptop, &[&text, "--conversation", &conversation]);
        sent.push(text);
    }
    // The same relay processes, no restart: everything arrives.
    wait_for("the phone to have every message after the restart", || {
        (texts(&phone, &conversation) == sent).then_some(())
    });
    let survivor = &mut instances[1 - victim];
    assert!(
        survivor.running.0.try_wait().unwrap().is_none(),
        "the surviving instance ran throughout"
    );
}

/// `jarvis-relay status --store …`: the fleet's database as an operator sees it (from any
/// machine, even one running no relay), never the URL's password. One instance here unlocks
/// its key from a passphrase file (a systemd credential), not from the environment.
#[test]
fn the_fleet_status_shows_the_database_and_the_instances_listening() {
    let cluster = common::postgres::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = cluster
        .url("postgres")
        .replace("postgres://jarvis@", "postgres://jarvis:hunter2@");
    let store = d.join("store-url");
    std::fs::write(&store, &url).unwrap();
    let store = store.to_str().unwrap().to_owned();
    let admin = d.join("admin");
    ok(&admin, &["admin", "init", "--org", "acme"]);
    let passphrase = d.join("passphrase");
    std::fs::write(&passphrase, "pw\n").unwrap();
    let mut running = Vec::new();
    for i in 1..=2 {
        let home = d.join(format!("relay-{i}"));
        enrol_relay_named(&admin, &home, &format!("relay-{i}"));
        let mut cmd = common::relay_cmd(&home);
        if i == 2 {
            cmd.env_remove("JARVIS_PASSPHRASE")
                .env("JARVIS_PASSPHRASE_FILE", &passphrase);
        }
        running.push(common::start_relay_from(cmd, &["--store-file", &store]));
    }
    let status = |home: &Path| {
        common::relay_cmd(home)
            .args(["status", "--store-file", &store, "--json"])
            .output()
            .unwrap()
    };
    let fleet = wait_for("both instances to be listening", || {
        let out = status(&d.join("relay-1"));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["fleet"]["instances_listening"] == 2).then_some(v)
    });
    assert_eq!(fleet["running"], true, "{fleet}");
    assert_eq!(
        fleet["fleet"]["schema_version"],
        jarvis_relay::pg::SCHEMA_VERSION,
        "{fleet}"
    );
    // From a machine that runs no relay: the database alone, in words too.
    let out = common::relay_cmd(&d.join("nowhere"))
        .args(["status", "--store-file", &store])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 instances listening"), "{text}");
    assert!(!text.contains("hunter2") && !fleet.to_string().contains("hunter2"));
    drop(running);
}

/// Two orgs on one database (a hosting provider's fleet: each org's relay instances, one
/// PostgreSQL). Both have a user called alice. Neither org's devices, relays or revocations see
/// anything of the other's: alice of acme never gets a conversation of alice of globex, and a
/// revocation published in one org is not in the other's relays.
#[test]
fn two_orgs_on_one_database_see_nothing_of_each_other() {
    let cluster = common::postgres::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url("postgres");
    let (acme_admin, [acme_laptop, acme_phone], acme) = fleet(&dir.path().join("acme"), &url, 1);
    let (globex_admin, [globex_laptop, globex_phone], globex) =
        fleet(&dir.path().join("globex"), &url, 1);
    let _a = up_at(&acme_laptop, &acme[0].address);
    let _g = up_at(&globex_laptop, &globex[0].address);
    let secret = say(&acme_laptop, &["acme's merger plans"]);
    let theirs = say(&globex_laptop, &["globex's quarterly numbers"]);
    // Each org's phone, on its own org's relay, gets its own org's conversation only.
    let _ap = up_at(&acme_phone, &acme[0].address);
    let _gp = up_at(&globex_phone, &globex[0].address);
    wait_for("acme's phone to get acme's note", || {
        (texts(&acme_phone, &secret) == ["acme's merger plans"]).then_some(())
    });
    wait_for("globex's phone to get globex's note", || {
        (texts(&globex_phone, &theirs) == ["globex's quarterly numbers"]).then_some(())
    });
    let conversations = |home: &Path| -> Vec<String> {
        ok(home, &["conversations"])["conversations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(conversations(&acme_phone), vec![secret.clone()]);
    assert_eq!(conversations(&globex_phone), vec![theirs.clone()]);
    // Not merely dropped by the devices (which take only their own user's writers): never
    // sent. A relay serving the other org's alice's ciphertext would show here.
    std::thread::sleep(std::time::Duration::from_secs(2));
    for phone in [&acme_phone, &globex_phone] {
        let quarantined = ok(phone, &["status"])["quarantined"].clone();
        assert_eq!(quarantined["unknown_writers"], 0, "{quarantined}");
        assert_eq!(quarantined["changes"], 0, "{quarantined}");
    }
    // Each relay's view (its status file, written every half second): its own org's two
    // devices, and its own org's bytes only.
    for instance in [&acme[0], &globex[0]] {
        wait_for("each relay to list its org's two devices", || {
            (relay_status(&instance.home)["devices"] == 2).then_some(())
        });
    }
    // A revocation in acme reaches acme's relay, not globex's.
    ok(&acme_admin, &["admin", "relays", "add", &acme[0].address]);
    let phone_id = ok(&acme_phone, &["whoami"])["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&acme_admin, &["admin", "revoke", "--device", &phone_id]);
    wait_for("acme's relay to hold the revocation", || {
        (relay_status(&acme[0].home)["revocations"] == 1).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(relay_status(&globex[0].home)["revocations"], 0);
    assert_eq!(relay_status(&globex[0].home)["devices"], 2);
    let _ = globex_admin;
}

/// The directory is the fleet's: the laptop on instance 1 lists the phone connected to
/// instance 2 (and the other way), with its chain, as one relay would.
#[test]
fn devices_on_two_instances_find_each_other_in_the_directory() {
    let cluster = common::postgres::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (_admin, [laptop, phone], instances) = fleet(dir.path(), &cluster.url("postgres"), 2);
    let _a = up_at(&laptop, &instances[0].address);
    let b = up_at(&phone, &instances[1].address);
    let listed = |home: &Path| -> Vec<String> {
        ok(home, &["status"])["directory"]["devices"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for("the laptop to list the phone", || {
        (listed(&laptop) == ["phone"]).then_some(())
    });
    wait_for("the phone to list the laptop", || {
        (listed(&phone) == ["laptop"]).then_some(())
    });
    // The phone leaves: instance 2 takes it off the shared directory, and the laptop's next
    // heartbeat at instance 1 no longer lists it.
    drop(b);
    wait_for("the laptop to see the phone gone", || {
        listed(&laptop).is_empty().then_some(())
    });
    // Removed from the database by instance 2 (not left to expire: rows are dropped as stale
    // only 70 s after their last heartbeat, longer than this test waits).
    let org: jarvis_identity::PublicKey = ok(&laptop, &["whoami"])["org_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let pg = Pg::connect(&cluster.url("postgres"), 1)
        .unwrap()
        .for_org(&org);
    wait_for("the phone's row to be removed", || {
        let rows = pg.directory_others(0, 120_000).unwrap();
        let names: Vec<String> = rows
            .iter()
            .filter_map(|(r, _)| serde_json::from_slice::<serde_json::Value>(r).ok())
            // The instances' own rows (they list themselves) aside.
            .filter(|v| v["relay"] != true)
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect();
        (names == ["laptop"]).then_some(())
    });
}

/// The relay's last refusal as a device shows it, if it is about the quota.
fn quota_refusal(home: &Path) -> Option<String> {
    last_refusal(home).filter(|r| r.contains("storage quota of user alice is full"))
}

/// A user's quota is the fleet's, not each instance's: the laptop fills alice's quota through
/// instance 1, and the phone's next message is refused by instance 2, which counted what
/// instance 1 stored from its announcements.
#[test]
fn a_users_quota_is_counted_across_instances() {
    let cluster = common::postgres::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (_admin, [laptop, phone], instances) = fleet_with(
        dir.path(),
        &cluster.url("postgres"),
        2,
        &["--quota", "4000"],
        false,
    );
    let _b = up_at(&phone, &instances[1].address);
    let _a = up_at(&laptop, &instances[0].address);
    let conversation = say(&laptop, &["the first message"]);
    wait_for("the phone to get the first message", || {
        (texts(&phone, &conversation) == ["the first message"]).then_some(())
    });
    let mut i = 0;
    wait_for("instance 1 to refuse the laptop for the quota", || {
        i += 1;
        let text = format!("message {i} {}", "x".repeat(400));
        say(&laptop, &[&text, "--conversation", &conversation]);
        quota_refusal(&laptop)
    });
    say(
        &phone,
        &["and one from the phone", "--conversation", &conversation],
    );
    let refused = wait_for("instance 2 to refuse the phone for the quota", || {
        quota_refusal(&phone)
    });
    eprintln!("the phone, at instance 2: {refused}");
}

/// The org's devices enrolled when the fleet had one instance (their bundles name only it). A
/// second instance starts: the devices learn it from the directory (its certificate chain
/// checked) and keep it in `relays.json`. The first instance is then `kill -9`ed: the laptop
/// moves to the second, and, restarted while the first is still down, starts on the second from
/// what it learned, and its notes reach the phone.
#[test]
fn an_instance_added_after_enrolment_is_learned_and_carries_the_devices() {
    let cluster = common::postgres::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (admin, [laptop, phone], mut instances) =
        fleet_with(d, &cluster.url("postgres"), 1, &[], true);
    let home = d.join("relay-2");
    enrol_relay_named(&admin, &home, "relay-2");
    let store = d.join("store-url");
    let (running, second, _) = start_relay_with(&home, &["--store-file", store.to_str().unwrap()]);
    let first = instances[0].address.clone();
    let listen = ["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"];
    let mut a = node_up(jarvis(&laptop), &listen);
    let org_relays = |home: &Path| -> Vec<String> {
        ok(home, &["status"])["dialing"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["kind"] == "relay")
            .filter_map(|d| d["address"].as_str().map(str::to_owned))
            .collect()
    };
    let known = wait_for("the laptop to learn the second instance", || {
        let known = org_relays(&laptop);
        known.contains(&second).then_some(known)
    });
    assert!(known.contains(&first), "{known:?}");
    let kept = std::fs::read_to_string(laptop.join("relays.json")).unwrap();
    assert!(kept.contains("relay-2"), "{kept}");

    // The first instance dies: the laptop goes to the second.
    instances[0].running.0.kill().unwrap();
    instances[0].running.0.wait().unwrap();
    let killed = Instant::now();
    wait_for("the laptop to use the second instance", || {
        (relay_in_use(&laptop).as_deref() == Some(second.as_str())).then_some(())
    });
    eprintln!(
        "first instance killed → laptop on the learned one: {:?}",
        killed.elapsed()
    );
    assert!(killed.elapsed() < std::time::Duration::from_secs(10));

    // Restarted while the first is still down: it starts on what it learned.
    drop(a);
    a = node_up(jarvis(&laptop), &listen);
    wait_for("the restarted laptop to use the second instance", || {
        (relay_in_use(&laptop).as_deref() == Some(second.as_str())).then_some(())
    });
    let _b = up_at(&phone, &second);
    let conversation = say(&laptop, &["after the first instance died"]);
    wait_for(
        "the phone to get the note through the second instance",
        || (texts(&phone, &conversation) == ["after the first instance died"]).then_some(()),
    );
    drop((a, running));
}
