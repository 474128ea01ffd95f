//! GPU peers for the `gpu-failure` scenario: devices choose a peer for each answer with the
//! node's own scheduler ([`jarvis_inference::offload::choose`], the code `jarvis up` runs), from
//! load reports a few seconds old; peers serve from modelled service times; one peer fails
//! mid-answers and its answers move to the others.
//!
//! The service model (stated in the report): an answer's first token comes `ttft_ms` after it
//! starts (longer by a tenth for each other answer running), then its tokens at `tokens_per_s`
//! divided by `active^batching` (continuous batching shares the GPU); a peer runs `slots`
//! answers at once and queues the rest in arrival order.

use std::collections::VecDeque;

use jarvis_inference::offload::{Candidate, Load, Local, Policy, choose};
use serde::Serialize;

use crate::engine::{Draws, HOUR, MS, Micros, Quantiles, Queue, SECOND};
use crate::net::LinkModel;

/// The GPU peers' service model.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GpuModel {
    pub peers: u16,
    pub slots: u32,
    pub ttft_ms: f64,
    pub tokens_per_s: f64,
    pub batching: f64,
    pub answer_tokens: u32,
    /// How often each peer reports its load to the devices.
    pub report_every_ms: u64,
    /// Answers each device asks for per hour.
    pub asks_per_device_per_hour: f64,
}

impl GpuModel {
    /// A vLLM-class peer serving a 7–8B model on one datacentre GPU (assumed, not measured
    /// here: this machine has no GPU).
    pub const DATACENTRE: Self = Self {
        peers: 4,
        slots: 16,
        ttft_ms: 60.0,
        tokens_per_s: 60.0,
        batching: 0.35,
        answer_tokens: 150,
        report_every_ms: 2_000,
        asks_per_device_per_hour: 20.0,
    };
}

#[derive(Debug)]
enum Event {
    Ask {
        device: u32,
    },
    /// A request reaches a peer.
    Arrive {
        peer: u16,
        request: u32,
    },
    Done {
        peer: u16,
        request: u32,
    },
    Report {
        peer: u16,
    },
    Fail {
        peer: u16,
    },
    /// The device learns its answer's peer is gone (the connection closed).
    Lost {
        request: u32,
    },
}

const K_ASK: u64 = 1 << 56;
const K_ARRIVE: u64 = 2 << 56;
const K_DONE: u64 = 3 << 56;
const K_REPORT: u64 = 4 << 56;
const K_FAIL: u64 = 5 << 56;
const K_LOST: u64 = 6 << 56;

struct Request {
    device: u32,
    asked: Micros,
    peer: Option<u16>,
    /// Attempts on peers (1 + failovers).
    attempts: u32,
    tried: Vec<u16>,
    first_token: Option<Micros>,
    done: bool,
    started: Option<Micros>,
    arrived: Micros,
}

struct Peer {
    up: bool,
    running: Vec<u32>,
    waiting: VecDeque<u32>,
    served: u64,
}

/// What a gpu-failure run measured.
#[derive(Debug, Serialize)]
pub struct GpuReport {
    pub model: GpuModel,
    pub devices: u32,
    pub failed_peer: u16,
    pub failed_at_s: f64,
    pub asked: u64,
    pub answered: u64,
    /// Answers that moved to another peer when theirs failed.
    pub failed_over: u64,
    /// Answers nobody could serve (no peer left that was up).
    pub unanswered: u64,
    pub answered_share: f64,
    /// Ask → first token, failovers included.
    pub first_token_ms: Quantiles,
    /// Of the answers that failed over.
    pub first_token_after_failover_ms: Quantiles,
    /// Time waiting in a peer's queue for a slot.
    pub queue_wait_ms: Quantiles,
    pub served_per_peer: Vec<u64>,
}

/// The fleet, its devices' choices, and the clock.
pub struct GpuWorld {
    queue: Queue<Event>,
    draws: Draws,
    link: LinkModel,
    model: GpuModel,
    devices: u32,
    /// Each device's view of the peers (the node's own `Candidate`s).
    views: Vec<Vec<Candidate<u16>>>,
    /// The last load each peer reported (broadcast to every device).
    reports: Vec<Option<Load>>,
    peers: Vec<Peer>,
    requests: Vec<Request>,
    asks: Vec<u64>,
    messages: u64,
    asking_until: Micros,
    first_token: Vec<u64>,
    first_token_failed_over: Vec<u64>,
    waits: Vec<u64>,
    unanswered: u64,
}

impl GpuWorld {
    pub fn new(seed: u64, devices: u32, model: GpuModel, asking_until: Micros) -> Self {
        let peers = model.peers.max(1);
        let mut world = Self {
            queue: Queue::default(),
            draws: Draws::new(seed),
            link: LinkModel::WAN,
            model,
            devices,
            views: (0..devices)
                .map(|_| (0..peers).map(Candidate::new).collect())
                .collect(),
            reports: vec![None; usize::from(peers)],
            peers: (0..peers)
                .map(|_| Peer {
                    up: true,
                    running: Vec::new(),
                    waiting: VecDeque::new(),
                    served: 0,
                })
                .collect(),
            requests: Vec::new(),
            asks: vec![0; devices as usize],
            messages: 0,
            asking_until,
            first_token: Vec::new(),
            first_token_failed_over: Vec::new(),
            waits: Vec::new(),
            unanswered: 0,
        };
        for peer in 0..peers {
            world.report(peer);
        }
        for device in 0..devices {
            world.schedule_ask(device, 0);
        }
        world
    }

    pub fn model(&self) -> GpuModel {
        self.model
    }

    /// Fails `peer` at `at`.
    pub fn fail(&mut self, peer: u16, at: Micros) {
        self.queue
            .at(at, (K_FAIL | u64::from(peer), 0), Event::Fail { peer });
    }

    pub fn events_run(&self) -> u64 {
        self.queue.ran
    }

    pub fn run_until(&mut self, until: Micros) {
        while let Some(event) = self.queue.next(until) {
            match event {
                Event::Ask { device } => self.ask(device),
                Event::Arrive { peer, request } => self.arrive(peer, request),
                Event::Done { peer, request } => self.done(peer, request),
                Event::Report { peer } => self.report(peer),
                Event::Fail { peer } => self.fail_now(peer),
                Event::Lost { request } => self.lost(request),
            }
        }
    }

    fn one_way(&mut self) -> Micros {
        self.messages += 1;
        self.link.latency(&self.draws, K_ARRIVE, self.messages)
    }

    fn schedule_ask(&mut self, device: u32, from: Micros) {
        let Some(n) = self.asks.get_mut(device as usize) else {
            return;
        };
        let counter = *n;
        *n += 1;
        let mean = HOUR as f64 / self.model.asks_per_device_per_hour.max(1e-9);
        let at = from
            + self
                .draws
                .exponential(K_ASK | u64::from(device), counter, mean) as Micros;
        if at < self.asking_until {
            self.queue.at(
                at,
                (K_ASK | u64::from(device), counter),
                Event::Ask { device },
            );
        }
    }

    fn ask(&mut self, device: u32) {
        let now = self.queue.now();
        self.schedule_ask(device, now);
        let request = self.requests.len() as u32;
        self.requests.push(Request {
            device,
            asked: now,
            peer: None,
            attempts: 0,
            tried: Vec::new(),
            first_token: None,
            done: false,
            started: None,
            arrived: now,
        });
        self.send(request);
    }

    /// The device chooses a peer (the node's own code) and sends the request to it.
    fn send(&mut self, request: u32) {
        let Some(r) = self.requests.get(request as usize) else {
            return;
        };
        let (device, tried, attempts) = (r.device, r.tried.clone(), r.attempts);
        let draw = self
            .draws
            .u64(K_ASK | u64::from(request), u64::from(attempts));
        let Some(view) = self.views.get_mut(device as usize) else {
            return;
        };
        for candidate in view.iter_mut() {
            candidate.load = self
                .reports
                .get(usize::from(candidate.peer))
                .cloned()
                .flatten();
        }
        let local = Local {
            ready: false,
            model_bytes: 0,
            saturated: true,
        };
        let Some(peer) = choose(Policy::Gpu, local, 0, view, &tried, draw).map(|c| c.peer) else {
            self.unanswered += 1;
            return;
        };
        if let Some(c) = view.iter_mut().find(|c| c.peer == peer) {
            c.in_flight += 1;
        }
        if let Some(r) = self.requests.get_mut(request as usize) {
            r.peer = Some(peer);
            r.attempts += 1;
            r.tried.push(peer);
        }
        let at = self.queue.now() + self.one_way();
        self.queue.at(
            at,
            (K_ARRIVE | u64::from(request), u64::from(attempts)),
            Event::Arrive { peer, request },
        );
    }

    fn arrive(&mut self, peer: u16, request: u32) {
        let now = self.queue.now();
        let Some(p) = self.peers.get_mut(usize::from(peer)) else {
            return;
        };
        if !p.up {
            // Sent to a peer already gone: the connection attempt fails.
            let at = now + self.one_way();
            self.queue.at(
                at,
                (K_LOST | u64::from(request), now),
                Event::Lost { request },
            );
            return;
        }
        if let Some(r) = self.requests.get_mut(request as usize) {
            r.arrived = now;
        }
        p.waiting.push_back(request);
        self.start_next(peer);
    }

    /// Starts waiting answers while slots are free.
    fn start_next(&mut self, peer: u16) {
        let now = self.queue.now();
        loop {
            let Some(p) = self.peers.get_mut(usize::from(peer)) else {
                return;
            };
            if p.running.len() >= self.model.slots as usize {
                return;
            }
            let Some(request) = p.waiting.pop_front() else {
                return;
            };
            p.running.push(request);
            let active = p.running.len() as f64;
            let ttft = self.model.ttft_ms * (1.0 + 0.1 * (active - 1.0));
            let rate = self.model.tokens_per_s / active.powf(self.model.batching);
            let generation = f64::from(self.model.answer_tokens) / rate.max(1e-9) * 1000.0;
            let back = self.one_way();
            let Some(r) = self.requests.get_mut(request as usize) else {
                continue;
            };
            self.waits.push(now.saturating_sub(r.arrived));
            r.started = Some(now);
            // The first token reaches the device a link latency after it is made.
            if r.first_token.is_none() {
                r.first_token = Some(now + (ttft * MS as f64) as Micros + back);
            }
            let done = now + ((ttft + generation) * MS as f64) as Micros;
            self.queue.at(
                done,
                (K_DONE | u64::from(request), u64::from(r.attempts)),
                Event::Done { peer, request },
            );
        }
    }

    fn done(&mut self, peer: u16, request: u32) {
        let Some(p) = self.peers.get_mut(usize::from(peer)) else {
            return;
        };
        if !p.up || !p.running.contains(&request) {
            return;
        }
        p.running.retain(|&r| r != request);
        p.served += 1;
        if let Some(r) = self.requests.get_mut(request as usize) {
            r.done = true;
            let took = self
                .queue
                .now()
                .saturating_sub(r.started.unwrap_or(r.asked));
            if let Some(c) = self
                .views
                .get_mut(r.device as usize)
                .and_then(|v| v.iter_mut().find(|c| c.peer == peer))
            {
                c.in_flight = c.in_flight.saturating_sub(1);
                c.record(took as f64 / MS as f64, false);
            }
            if let Some(first) = r.first_token {
                let ms = first.saturating_sub(r.asked);
                self.first_token.push(ms);
                if r.attempts > 1 {
                    self.first_token_failed_over.push(ms);
                }
            }
        }
        self.start_next(peer);
    }

    fn report(&mut self, peer: u16) {
        let now = self.queue.now();
        let Some(p) = self.peers.get(usize::from(peer)) else {
            return;
        };
        if !p.up {
            return;
        }
        let load = Load {
            model: "model".into(),
            model_bytes: 4 << 30,
            slots: self.model.slots,
            busy: (p.running.len() + p.waiting.len()) as u32,
            ready: true,
            backend: "openai".into(),
            accelerator: String::new(),
        };
        if let Some(r) = self.reports.get_mut(usize::from(peer)) {
            *r = Some(load);
        }
        // Peers report out of step with each other.
        let jitter = (self.draws.unit(K_REPORT | u64::from(peer), now) * 200.0 * MS as f64) as u64;
        let next = now + self.model.report_every_ms * MS + jitter;
        self.queue.at(
            next,
            (K_REPORT | u64::from(peer), next),
            Event::Report { peer },
        );
    }

    fn fail_now(&mut self, peer: u16) {
        let now = self.queue.now();
        let Some(p) = self.peers.get_mut(usize::from(peer)) else {
            return;
        };
        p.up = false;
        let lost: Vec<u32> = p.running.drain(..).chain(p.waiting.drain(..)).collect();
        if let Some(r) = self.reports.get_mut(usize::from(peer)) {
            *r = None;
        }
        for request in lost {
            // A first token still on its way never arrives.
            if let Some(r) = self.requests.get_mut(request as usize)
                && r.first_token.is_some_and(|t| t > now)
            {
                r.first_token = None;
            }
            // The process is gone: each device's stream closes a link latency later.
            let at = now + self.one_way();
            self.queue.at(
                at,
                (K_LOST | u64::from(request), now),
                Event::Lost { request },
            );
        }
    }

    /// The device's answer failed with its peer: the node records the failure and sends the
    /// rest of the answer to another peer (continuing from what arrived).
    fn lost(&mut self, request: u32) {
        let Some(r) = self.requests.get(request as usize) else {
            return;
        };
        if r.done {
            return;
        }
        if let (Some(peer), device) = (r.peer, r.device)
            && let Some(c) = self
                .views
                .get_mut(device as usize)
                .and_then(|v| v.iter_mut().find(|c| c.peer == peer))
        {
            c.in_flight = c.in_flight.saturating_sub(1);
            c.record(0.0, true);
        }
        self.send(request);
    }

    pub fn report_of(&self, failed_peer: u16, failed_at: Micros) -> GpuReport {
        let asked = self.requests.len() as u64;
        let answered = self.requests.iter().filter(|r| r.done).count() as u64;
        let failed_over = self
            .requests
            .iter()
            .filter(|r| r.done && r.attempts > 1)
            .count() as u64;
        GpuReport {
            model: self.model,
            devices: self.devices,
            failed_peer,
            failed_at_s: (failed_at / SECOND) as f64,
            asked,
            answered,
            failed_over,
            unanswered: self.unanswered,
            answered_share: answered as f64 / asked.max(1) as f64,
            first_token_ms: Quantiles::of(&mut self.first_token.clone()),
            first_token_after_failover_ms: Quantiles::of(&mut self.first_token_failed_over.clone()),
            queue_wait_ms: Quantiles::of(&mut self.waits.clone()),
            served_per_peer: self.peers.iter().map(|p| p.served).collect(),
        }
    }
}
