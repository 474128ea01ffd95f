//! A bounded, fair queue of requests: round-robin between clients, first-come within a client.
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

/// The queue. `K` names a client, `T` is a request.
#[derive(Debug)]
pub struct FairQueue<K, T> {
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

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `request` for `client`.
    ///
    /// # Errors
    /// [`Full`] when the queue, or this client's share of it, is full; the request is not queued.
    pub fn push(&mut self, client: K, request: T) -> Result<(), Full> {
        if self.len >= self.capacity {
            return Err(Full::Total(self.len));
        }
        if let Some((_, queue)) = self.clients.iter_mut().find(|(k, _)| *k == client) {
            if queue.len() >= self.per_client {
                return Err(Full::Client(queue.len()));
            }
            queue.push_back(request);
        } else {
            if self.per_client == 0 {
                return Err(Full::Client(0));
            }
            self.clients.push_back((client, VecDeque::from([request])));
        }
        self.len += 1;
        Ok(())
    }

    /// The next request: the oldest of the client whose turn it is; that client goes to the back.
    pub fn pop(&mut self) -> Option<(K, T)> {
        let (client, mut queue) = self.clients.pop_front()?;
        let request = queue.pop_front()?;
        self.len -= 1;
        if !queue.is_empty() {
            self.clients.push_back((client.clone(), queue));
        }
        Some((client, request))
    }

    /// Takes out the first waiting request that `matches` (a cancelled one), wherever it is.
    pub fn remove(&mut self, mut matches: impl FnMut(&T) -> bool) -> Option<T> {
        let (c, at) = self
            .clients
            .iter()
            .enumerate()
            .find_map(|(c, (_, queue))| queue.iter().position(&mut matches).map(|at| (c, at)))?;
        let (_, queue) = self.clients.get_mut(c)?;
        let request = queue.remove(at)?;
        if queue.is_empty() {
            self.clients.remove(c);
        }
        self.len -= 1;
        Some(request)
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
