//! A bounded, fair queue of requests: round-robin between clients, first-come within a client,
//! and a spoken turn ahead of typed and API requests.
//!
//! A voice turn has someone waiting in silence, so it is queued in an urgent class taken before
//! every other request ([`FairQueue::push_urgent`]), round-robin between clients there too. A
//! client cannot use that class to starve others: beyond [`URGENT_PER_CLIENT`] urgent requests
//! waiting (more than anyone can be saying at once), its requests queue as ordinary ones.
//!
//! The engine generates a few requests at once (its slots); the rest wait here. A script that sends
//! fifty requests must not push a user's one voice question behind all fifty, so the queue takes
//! turns between clients (a client is whoever the caller says: the API token's user, a peer).
//! Sans-IO: no clock, no tasks; the supervisor owns one and drives it.

use std::collections::VecDeque;

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// The queue holds its limit of requests in all.
    #[error("the engine's queue is full ({0} requests waiting); try again shortly")]
    Total(usize),
    /// This client holds its limit.
    #[error("this client already has {0} requests waiting; wait for one to finish")]
    Client(usize),
}

/// Urgent (spoken) requests one client may have waiting; more wait as ordinary requests.
pub const URGENT_PER_CLIENT: usize = 2;

/// The queue. `K` names a client, `T` is a request.
#[derive(Debug)]
pub struct FairQueue<K, T> {
    /// Clients with urgent requests waiting, in turn order: taken first.
    urgent: VecDeque<(K, VecDeque<T>)>,
    /// Clients with waiting requests, in turn order.
    clients: VecDeque<(K, VecDeque<T>)>,
    len: usize,
    capacity: usize,
    per_client: usize,
}

impl<K: PartialEq + Clone, T> FairQueue<K, T> {
    /// A queue holding at most `capacity` requests, and at most `per_client` from one client.
    pub fn new(capacity: usize, per_client: usize) -> Self {
        Self {
            urgent: VecDeque::new(),
            clients: VecDeque::new(),
            len: 0,
            capacity,
            per_client,
        }
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Requests waiting in the urgent class (spoken turns ahead of the rest).
    pub fn urgent_len(&self) -> usize {
        self.urgent.iter().map(|(_, queue)| queue.len()).sum()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Requests `client` has waiting, of both classes.
    fn waiting(&self, client: &K) -> usize {
        self.urgent
            .iter()
            .chain(&self.clients)
            .filter(|(k, _)| k == client)
            .map(|(_, queue)| queue.len())
            .sum()
    }

    /// Queues `request` for `client`.
    ///
    /// # Errors
    /// [`Full`] when the queue, or this client's share of it, is full; the request is not queued.
    pub fn push(&mut self, client: K, request: T) -> Result<(), Full> {
        self.admit(&client)?;
        Self::append(&mut self.clients, client, request);
        self.len += 1;
        Ok(())
    }

    /// Queues `request` for `client` ahead of every ordinary request (a spoken turn); as an
    /// ordinary one if the client has [`URGENT_PER_CLIENT`] urgent ones waiting already.
    ///
    /// # Errors
    /// As [`FairQueue::push`].
    pub fn push_urgent(&mut self, client: K, request: T) -> Result<(), Full> {
        self.admit(&client)?;
        let urgent_waiting = self
            .urgent
            .iter()
            .find(|(k, _)| *k == client)
            .map_or(0, |(_, queue)| queue.len());
        let class = if urgent_waiting < URGENT_PER_CLIENT {
            &mut self.urgent
        } else {
            &mut self.clients
        };
        Self::append(class, client, request);
        self.len += 1;
        Ok(())
    }

    fn admit(&self, client: &K) -> Result<(), Full> {
        if self.len >= self.capacity {
            return Err(Full::Total(self.len));
        }
        let waiting = self.waiting(client);
        if waiting >= self.per_client {
            return Err(Full::Client(waiting));
        }
        Ok(())
    }

    fn append(class: &mut VecDeque<(K, VecDeque<T>)>, client: K, request: T) {
        if let Some((_, queue)) = class.iter_mut().find(|(k, _)| *k == client) {
            queue.push_back(request);
        } else {
            class.push_back((client, VecDeque::from([request])));
        }
    }

    /// The next request: an urgent one if any waits, else an ordinary one; the oldest of the
    /// client whose turn it is in that class, and that client goes to the back.
    pub fn pop(&mut self) -> Option<(K, T)> {
        let class = if self.urgent.is_empty() {
            &mut self.clients
        } else {
            &mut self.urgent
        };
        let (client, mut queue) = class.pop_front()?;
        let request = queue.pop_front()?;
        self.len -= 1;
        if !queue.is_empty() {
            class.push_back((client.clone(), queue));
        }
        Some((client, request))
    }

    /// The next request when only urgent ones may start now (every ordinary place is taken and
    /// a place is kept for spoken turns): the next urgent one, if any waits.
    pub fn pop_urgent(&mut self) -> Option<(K, T)> {
        let (client, mut queue) = self.urgent.pop_front()?;
        let request = queue.pop_front()?;
        self.len -= 1;
        if !queue.is_empty() {
            self.urgent.push_back((client.clone(), queue));
        }
        Some((client, request))
    }

    /// Takes out the first waiting request that `matches` (a cancelled one), wherever it is.
    pub fn remove(&mut self, mut matches: impl FnMut(&T) -> bool) -> Option<T> {
        for class in [&mut self.urgent, &mut self.clients] {
            let Some((c, at)) = class
                .iter()
                .enumerate()
                .find_map(|(c, (_, queue))| queue.iter().position(&mut matches).map(|at| (c, at)))
            else {
                continue;
            };
            let (_, queue) = class.get_mut(c)?;
            let request = queue.remove(at)?;
            if queue.is_empty() {
                class.remove(c);
            }
            self.len -= 1;
            return Some(request);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_busy_client_does_not_hold_back_another() {
        let mut q = FairQueue::new(100, 50);
        for i in 0..10 {
            q.push("script", i).unwrap();
        }
        q.push("voice", 100).unwrap();
        assert_eq!(q.pop(), Some(("script", 0)));
        assert_eq!(
            q.pop(),
            Some(("voice", 100)),
            "the other client's turn comes next"
        );
        assert_eq!(q.pop(), Some(("script", 1)));
        assert_eq!(q.len(), 8);
    }

    #[test]
    fn a_spoken_turn_goes_first_but_cannot_starve_the_others() {
        let mut q = FairQueue::new(100, 50);
        for i in 0..5 {
            q.push("script", i).unwrap();
        }
        q.push_urgent("ann", 100).unwrap();
        q.push_urgent("bob", 200).unwrap();
        assert_eq!(q.pop(), Some(("ann", 100)), "urgent first");
        assert_eq!(q.pop(), Some(("bob", 200)), "round-robin among urgent");
        assert_eq!(q.pop(), Some(("script", 0)));
        // A client marking everything urgent gets URGENT_PER_CLIENT ahead; the rest wait their
        // ordinary turn with everyone else.
        for i in 0..6 {
            q.push_urgent("greedy", 300 + i).unwrap();
        }
        for i in 0..URGENT_PER_CLIENT {
            assert_eq!(q.pop(), Some(("greedy", 300 + i as i32)));
        }
        assert_eq!(q.pop(), Some(("script", 1)), "then ordinary turns, fairly");
        assert_eq!(q.pop(), Some(("greedy", 302)));
        assert_eq!(q.pop(), Some(("script", 2)));
        // Limits count both classes; removal finds either.
        let mut small = FairQueue::new(10, 2);
        small.push_urgent(1, "a").unwrap();
        small.push(1, "b").unwrap();
        assert_eq!(small.push_urgent(1, "c"), Err(Full::Client(2)));
        assert_eq!(small.remove(|r| *r == "a"), Some("a"));
        assert_eq!(small.len(), 1);
    }

    #[test]
    fn a_place_kept_for_spoken_turns_takes_only_them() {
        let mut q = FairQueue::new(100, 50);
        q.push("typed", 1).unwrap();
        assert_eq!(q.pop_urgent(), None, "an ordinary request does not take it");
        assert_eq!(q.len(), 1);
        q.push_urgent("ann", 2).unwrap();
        q.push_urgent("bob", 3).unwrap();
        assert_eq!(q.pop_urgent(), Some(("ann", 2)));
        assert_eq!(q.pop_urgent(), Some(("bob", 3)));
        assert_eq!(q.pop_urgent(), None);
        assert_eq!(q.pop(), Some(("typed", 1)));
        assert!(q.is_empty());
    }

    #[test]
    fn limits_refuse_without_queueing() {
        let mut q = FairQueue::new(3, 2);
        q.push(1, "a").unwrap();
        q.push(1, "b").unwrap();
        assert_eq!(q.push(1, "c"), Err(Full::Client(2)));
        q.push(2, "d").unwrap();
        assert_eq!(q.push(3, "e"), Err(Full::Total(3)));
        assert_eq!(q.len(), 3);
        assert_eq!(q.remove(|r| *r == "b"), Some("b"));
        assert_eq!(q.remove(|r| *r == "zz"), None);
        assert_eq!(q.len(), 2);
    }

    proptest! {
        /// Whatever the pushes, pops give every request exactly once, each client's in order, and
        /// between two requests of one client at most one of each other waiting client.
        #[test]
        fn round_robin_and_order(pushes in proptest::collection::vec(0u8..4, 0..60)) {
            let mut q = FairQueue::new(1000, 1000);
            for (i, client) in pushes.iter().enumerate() {
                q.push(*client, i).unwrap();
            }
            let mut out = Vec::new();
            while let Some(item) = q.pop() {
                out.push(item);
            }
            prop_assert_eq!(out.len(), pushes.len());
            prop_assert!(q.is_empty());
            for client in 0u8..4 {
                let mine: Vec<usize> = out.iter().filter(|(c, _)| *c == client).map(|(_, i)| *i).collect();
                prop_assert!(mine.windows(2).all(|w| w[0] < w[1]), "in order within a client");
            }
            // Fairness: in any window of pops, counts of two clients that both still had work
            // differ by at most one.
            let clients: std::collections::BTreeSet<u8> = pushes.iter().copied().collect();
            for a in &clients {
                for b in &clients {
                    let total_a = out.iter().filter(|(c, _)| c == a).count();
                    let total_b = out.iter().filter(|(c, _)| c == b).count();
                    let both = total_a.min(total_b);
                    // Within the first 2*both pops involving a or b, they alternate.
                    let seq: Vec<u8> = out.iter().map(|(c, _)| *c).filter(|c| c == a || c == b).take(2 * both).collect();
                    let na = seq.iter().filter(|c| *c == a).count();
                    let nb = seq.len() - na;
                    prop_assert!(na.abs_diff(nb) <= 1 || a == b);
                }
            }
        }
    }
}
