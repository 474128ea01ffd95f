//! Several relay instances over one PostgreSQL database (the fleet, #21), with real `jarvis-relay`
//! and `jarvis up` processes on loopback QUIC and a throwaway PostgreSQL cluster.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{enrol_relay_named, jarvis, node_up, ok, start_relay_with, wait_for};
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
