//! Lambda's concurrency model: an account limit shared by every function, per-function
//! reservations that are both a guarantee and a ceiling, and provisioned concurrency set
//! aside for the versions it was configured on.
//!
//! A function with a reservation of R runs at most R invocations at once, and nothing else
//! can take those R. Provisioned concurrency P on a version is set aside the same way, for
//! invocations of that version: inside the function's reservation when it has one (its
//! other invocations then share R − P, so P = R throttles `$LATEST`, as on AWS), otherwise
//! out of the account limit. Functions without a reservation share what is left of the
//! account limit after all reservations and their own provisioned concurrency (the
//! "unreserved" pool). An invocation of a version first takes a slot of the version's
//! provisioned concurrency and spills over to on-demand concurrency (the reservation's
//! remainder, or the unreserved pool) when all of it is in use.
//!
//! Each invocation holds a [`ConcurrencyPermit`] from before its environment is chosen
//! until it has answered; dropping the permit gives the slot back. Besides its own pool,
//! every permit counts against the account limit itself, so resizing pools (a lowered or
//! removed reservation, a changed provisioned count) never lets more than the account
//! limit run while the invocations admitted under the old sizes drain. Admission is two
//! compare-and-swaps under a read lock, never a lock held across an await.

use std::collections::{BTreeMap, HashMap};
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

    fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Acquire)
    }
}

/// One function's concurrency settings and the pools made of them.
#[derive(Debug, Default)]
struct FunctionConcurrency {
    /// What `PutFunctionConcurrency` set.
    reserved: Option<u32>,
    /// Provisioned concurrency per published version (summed over the configurations
    /// that resolve to it).
    provisioned: BTreeMap<String, u32>,
    /// With a reservation: what on-demand invocations of the function share, the
    /// reservation minus its provisioned concurrency. Without one they use the unreserved
    /// pool.
    on_demand: Option<Arc<Pool>>,
    /// Per version, its provisioned concurrency. A version whose provisioned concurrency
    /// was removed keeps a pool of limit 0 while invocations admitted on it still run.
    set_aside: HashMap<String, Arc<Pool>>,
}

impl FunctionConcurrency {
    fn provisioned_total(&self) -> u32 {
        self.provisioned
            .values()
            .fold(0u32, |sum, count| sum.saturating_add(*count))
    }

    /// Resizes the function's pools to its settings.
    fn resize(&mut self) {
        for (version, count) in &self.provisioned {
            match self.set_aside.get(version) {
                Some(pool) => pool.set_limit(*count),
                None => {
                    self.set_aside
                        .insert(version.clone(), Arc::new(Pool::new(*count)));
                }
            }
        }
        let provisioned = &self.provisioned;
        self.set_aside.retain(|version, pool| {
            if provisioned.contains_key(version) {
                return true;
            }
            pool.set_limit(0);
            pool.in_use() > 0
        });
        let total = self.provisioned_total();
        self.on_demand = match (self.reserved, self.on_demand.take()) {
            (None, _) => None,
            (Some(reserved), Some(pool)) => {
                pool.set_limit(reserved.saturating_sub(total));
                Some(pool)
            }
            (Some(reserved), None) => Some(Arc::new(Pool::new(reserved.saturating_sub(total)))),
        };
    }

    /// What the function takes out of the account limit: its reservation, or without one
    /// its provisioned concurrency.
    fn claimed(&self) -> u32 {
        self.reserved.unwrap_or_else(|| self.provisioned_total())
    }

    fn is_empty(&self) -> bool {
        self.reserved.is_none() && self.provisioned.is_empty() && self.set_aside.is_empty()
    }
}

/// The account's concurrency, shared by every invocation of every function.
#[derive(Debug)]
pub struct ConcurrencyGovernor {
    account_limit: u32,
    /// Every invocation running, from whichever pool: never more than the account limit.
    account: Arc<Pool>,
    /// What functions without a reservation share: the account limit minus reservations
    /// and the provisioned concurrency of functions without one.
    unreserved: Arc<Pool>,
    functions: RwLock<HashMap<String, FunctionConcurrency>>,
}

/// One invocation's claim on concurrency; released when dropped.
#[derive(Debug)]
pub struct ConcurrencyPermit {
    pool: Arc<Pool>,
    account: Arc<Pool>,
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        self.pool.give_back();
        self.account.give_back();
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
            account: Arc::new(Pool::new(account_limit)),
            unreserved: Arc::new(Pool::new(account_limit)),
            functions: RwLock::new(HashMap::new()),
        }
    }

    pub fn account_limit(&self) -> u32 {
        self.account_limit
    }

    /// Invocations running now, across every function.
    pub fn in_use(&self) -> u32 {
        self.account.in_use()
    }

    /// Claims one concurrent execution for an invocation of `version` of `function_name`:
    /// a slot of the version's provisioned concurrency if one is free, else on-demand
    /// concurrency.
    pub fn acquire(
        &self,
        function_name: &str,
        version: &str,
    ) -> Result<ConcurrencyPermit, ThrottleReason> {
        let pool = {
            let functions = self.functions.read().unwrap_or_else(|p| p.into_inner());
            let function = functions.get(function_name);
            let provisioned = function
                .and_then(|f| f.set_aside.get(version))
                .filter(|pool| pool.try_take());
            match (provisioned, function.and_then(|f| f.on_demand.as_ref())) {
                (Some(pool), _) => pool.clone(),
                (None, Some(reserved)) if reserved.try_take() => reserved.clone(),
                (None, Some(_)) => {
                    return Err(ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded);
                }
                (None, None) if self.unreserved.try_take() => self.unreserved.clone(),
                (None, None) => return Err(ThrottleReason::ConcurrentInvocationLimitExceeded),
            }
        };
        if !self.account.try_take() {
            // Only while invocations admitted before a resize drain.
            pool.give_back();
            return Err(ThrottleReason::ConcurrentInvocationLimitExceeded);
        }
        Ok(ConcurrencyPermit {
            pool,
            account: self.account.clone(),
        })
    }

    /// Sets or removes a function's reservation (the control plane has checked and stored
    /// it). Invocations already running keep their permits; a changed limit applies to
    /// the next ones.
    pub fn set_reservation(&self, function_name: &str, reserved: Option<u32>) {
        self.update(function_name, |function| function.reserved = reserved);
    }

    /// Sets the provisioned concurrency of every version of a function; versions not in
    /// `targets` get none.
    pub fn set_provisioned(&self, function_name: &str, targets: &BTreeMap<String, u32>) {
        self.update(function_name, |function| {
            function.provisioned = targets
                .iter()
                .filter(|(_, count)| **count > 0)
                .map(|(version, count)| (version.clone(), *count))
                .collect();
        });
    }

    fn update(&self, function_name: &str, change: impl FnOnce(&mut FunctionConcurrency)) {
        let mut functions = self.functions.write().unwrap_or_else(|p| p.into_inner());
        let function = functions.entry(function_name.to_owned()).or_default();
        change(function);
        function.resize();
        if function.is_empty() {
            functions.remove(function_name);
        }
        let claimed = functions
            .values()
            .fold(0u32, |sum, f| sum.saturating_add(f.claimed()));
        self.unreserved
            .set_limit(self.account_limit.saturating_sub(claimed));
    }

    /// The account limit minus every reservation and the provisioned concurrency of
    /// functions without one.
    pub fn unreserved_limit(&self) -> u32 {
        self.unreserved.limit.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(v, c)| (v.to_string(), *c)).collect()
    }

    #[test]
    fn a_reservation_is_a_ceiling_and_a_guarantee() {
        let governor = ConcurrencyGovernor::new(3);
        governor.set_reservation("reserved", Some(1));
        assert_eq!(governor.unreserved_limit(), 2);

        let first = governor.acquire("reserved", "$LATEST").unwrap();
        assert_eq!(
            governor.acquire("reserved", "$LATEST").unwrap_err(),
            ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded
        );
        // The other functions share the remaining two, and cannot take the reserved one.
        let a = governor.acquire("other", "$LATEST").unwrap();
        let b = governor.acquire("another", "1").unwrap();
        assert_eq!(
            governor.acquire("other", "$LATEST").unwrap_err(),
            ThrottleReason::ConcurrentInvocationLimitExceeded
        );
        assert_eq!(governor.in_use(), 3);
        drop((first, a));
        assert!(governor.acquire("reserved", "$LATEST").is_ok());
        assert!(governor.acquire("other", "$LATEST").is_ok());
        drop(b);
    }

    #[test]
    fn zero_throttles_everything_and_removal_returns_to_the_shared_pool() {
        let governor = ConcurrencyGovernor::new(10);
        governor.set_reservation("off", Some(0));
        assert!(governor.acquire("off", "$LATEST").is_err());
        governor.set_reservation("off", None);
        assert_eq!(governor.unreserved_limit(), 10);
        assert!(governor.acquire("off", "$LATEST").is_ok());
    }

    #[test]
    fn provisioned_concurrency_is_set_aside_for_its_version() {
        let governor = ConcurrencyGovernor::new(4);
        governor.set_provisioned("warm", &targets(&[("1", 2)]));
        assert_eq!(governor.unreserved_limit(), 2);
        // Others fill the unreserved pool; the provisioned version still runs twice.
        let others: Vec<_> = (0..2)
            .map(|_| governor.acquire("other", "$LATEST").unwrap())
            .collect();
        assert!(governor.acquire("other", "$LATEST").is_err());
        let warm: Vec<_> = (0..2)
            .map(|_| governor.acquire("warm", "1").unwrap())
            .collect();
        // Beyond its provisioned concurrency it spills over to on-demand, now full; its
        // $LATEST never had any set aside.
        assert_eq!(
            governor.acquire("warm", "1").unwrap_err(),
            ThrottleReason::ConcurrentInvocationLimitExceeded
        );
        assert!(governor.acquire("warm", "$LATEST").is_err());
        drop(others);
        assert!(governor.acquire("warm", "1").is_ok(), "spills over");
        drop(warm);
        governor.set_provisioned("warm", &BTreeMap::new());
        assert_eq!(governor.unreserved_limit(), 4);
    }

    #[test]
    fn provisioned_concurrency_within_a_reservation_leaves_the_rest_on_demand() {
        let governor = ConcurrencyGovernor::new(10);
        governor.set_reservation("f", Some(2));
        governor.set_provisioned("f", &targets(&[("1", 2)]));
        // All of the reservation is provisioned: $LATEST is throttled, as on AWS.
        assert_eq!(governor.unreserved_limit(), 8);
        assert_eq!(
            governor.acquire("f", "$LATEST").unwrap_err(),
            ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded
        );
        let _a = governor.acquire("f", "1").unwrap();
        let _b = governor.acquire("f", "1").unwrap();
        assert!(governor.acquire("f", "1").is_err());
        governor.set_reservation("f", Some(3));
        assert!(governor.acquire("f", "$LATEST").is_ok());
    }

    #[test]
    fn resizing_never_admits_more_than_the_account_limit() {
        let governor = ConcurrencyGovernor::new(4);
        governor.set_reservation("big", Some(3));
        let running: Vec<_> = (0..3)
            .map(|_| governor.acquire("big", "$LATEST").unwrap())
            .collect();
        // Lowering the reservation hands two slots back to the unreserved pool at once,
        // but three invocations still hold the old ones.
        governor.set_reservation("big", Some(1));
        assert_eq!(governor.unreserved_limit(), 3);
        let other = governor.acquire("other", "$LATEST").unwrap();
        assert_eq!(
            governor.acquire("other", "$LATEST").unwrap_err(),
            ThrottleReason::ConcurrentInvocationLimitExceeded
        );
        assert_eq!(
            governor.acquire("big", "$LATEST").unwrap_err(),
            ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded
        );
        assert_eq!(governor.in_use(), 4);
        drop(running);
        let more: Vec<_> = (0..2)
            .map(|_| governor.acquire("other", "$LATEST").unwrap())
            .collect();
        assert!(governor.acquire("big", "$LATEST").is_ok());
        drop((other, more));
        assert_eq!(governor.in_use(), 0);
    }
}
