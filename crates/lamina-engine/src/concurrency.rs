//! Lambda's concurrency model: an account limit shared by every function, and per-function
//! reservations that are both a guarantee and a ceiling.
//!
//! A function with a reservation of R runs at most R invocations at once, and nothing else
//! can take those R. Functions without one share what is left of the account limit after
//! all reservations (the "unreserved" pool). Each invocation holds a [`ConcurrencyPermit`]
//! from before its environment is chosen until it has answered; dropping the permit gives
//! the slot back. Admission is a compare-and-swap on one counter, so the warm path pays a
//! map lookup and an atomic, never a lock held across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

/// Why an invocation was throttled, as AWS names it in `TooManyRequestsException.Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleReason {
    /// The unreserved pool (account limit minus all reservations) is in use.
    ConcurrentInvocationLimitExceeded,
    /// The function's own reservation is in use (or is 0).
    ReservedFunctionConcurrentInvocationLimitExceeded,
}

impl ThrottleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleReason::ConcurrentInvocationLimitExceeded => {
                "ConcurrentInvocationLimitExceeded"
            }
            ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded => {
                "ReservedFunctionConcurrentInvocationLimitExceeded"
            }
        }
    }
}

/// A counter of invocations in flight against a ceiling.
#[derive(Debug)]
struct Pool {
    limit: AtomicU32,
    in_use: AtomicU32,
}

impl Pool {
    fn new(limit: u32) -> Pool {
        Pool {
            limit: AtomicU32::new(limit),
            in_use: AtomicU32::new(0),
        }
    }

    fn try_take(&self) -> bool {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_use| {
                (in_use < self.limit.load(Ordering::Acquire)).then_some(in_use + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The account's concurrency, shared by every invocation of every function.
#[derive(Debug)]
pub struct ConcurrencyGovernor {
    account_limit: u32,
    /// What functions without a reservation share: the account limit minus reservations.
    unreserved: Arc<Pool>,
    reservations: RwLock<HashMap<String, Arc<Pool>>>,
}

/// One invocation's claim on concurrency; released when dropped.
#[derive(Debug)]
pub struct ConcurrencyPermit {
    pool: Arc<Pool>,
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        self.pool.give_back();
    }
}

impl ConcurrencyGovernor {
    /// How much of an account limit AWS keeps unreserved: 100, or all of a smaller limit
    /// (a new account limited to 10 answers "below its minimum value of [10]").
    pub fn minimum_unreserved(account_limit: u32) -> u32 {
        account_limit.min(100)
    }

    pub fn new(account_limit: u32) -> ConcurrencyGovernor {
        ConcurrencyGovernor {
            account_limit,
            unreserved: Arc::new(Pool::new(account_limit)),
            reservations: RwLock::new(HashMap::new()),
        }
    }

    pub fn account_limit(&self) -> u32 {
        self.account_limit
    }

    /// Invocations running now, across every function.
    pub fn in_use(&self) -> u32 {
        let reserved: u32 = self
            .reservations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|pool| pool.in_use.load(Ordering::Acquire))
            .sum();
        reserved + self.unreserved.in_use.load(Ordering::Acquire)
    }

    /// Claims one concurrent execution for an invocation of `function_name`.
    pub fn acquire(&self, function_name: &str) -> Result<ConcurrencyPermit, ThrottleReason> {
        let reserved = self
            .reservations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(function_name)
            .cloned();
        match reserved {
            Some(pool) if pool.try_take() => Ok(ConcurrencyPermit { pool }),
            Some(_) => Err(ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded),
            None if self.unreserved.try_take() => Ok(ConcurrencyPermit {
                pool: self.unreserved.clone(),
            }),
            None => Err(ThrottleReason::ConcurrentInvocationLimitExceeded),
        }
    }

    /// Sets or removes a function's reservation (the control plane has checked and stored
    /// it). Invocations already running keep their permits; a changed limit applies to
    /// the next ones.
    pub fn set_reservation(&self, function_name: &str, reserved: Option<u32>) {
        let mut reservations = self.reservations.write().unwrap_or_else(|p| p.into_inner());
        match reserved {
            Some(limit) => match reservations.get(function_name) {
                Some(pool) => pool.limit.store(limit, Ordering::Release),
                None => {
                    reservations.insert(function_name.to_owned(), Arc::new(Pool::new(limit)));
                }
            },
            None => {
                reservations.remove(function_name);
            }
        }
        let total: u32 = reservations
            .values()
            .map(|pool| pool.limit.load(Ordering::Acquire))
            .sum();
        self.unreserved
            .limit
            .store(self.account_limit.saturating_sub(total), Ordering::Release);
    }

    /// The account limit minus every reservation.
    pub fn unreserved_limit(&self) -> u32 {
        self.unreserved.limit.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_is_a_ceiling_and_a_guarantee() {
        let governor = ConcurrencyGovernor::new(3);
        governor.set_reservation("reserved", Some(1));
        assert_eq!(governor.unreserved_limit(), 2);

        let first = governor.acquire("reserved").unwrap();
        assert_eq!(
            governor.acquire("reserved").unwrap_err(),
            ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded
        );
        // The other functions share the remaining two, and cannot take the reserved one.
        let a = governor.acquire("other").unwrap();
        let b = governor.acquire("another").unwrap();
        assert_eq!(
            governor.acquire("other").unwrap_err(),
            ThrottleReason::ConcurrentInvocationLimitExceeded
        );
        assert_eq!(governor.in_use(), 3);
        drop((first, a));
        assert!(governor.acquire("reserved").is_ok());
        assert!(governor.acquire("other").is_ok());
        drop(b);
    }

    #[test]
    fn zero_throttles_everything_and_removal_returns_to_the_shared_pool() {
        let governor = ConcurrencyGovernor::new(10);
        governor.set_reservation("off", Some(0));
        assert!(governor.acquire("off").is_err());
        governor.set_reservation("off", None);
        assert_eq!(governor.unreserved_limit(), 10);
        assert!(governor.acquire("off").is_ok());
    }
}
