//! Admission by host memory: a new execution environment starts only if the host could
//! give it all the memory its function may use, beyond a reserve kept for the server and
//! the system. Idle environments are reclaimed first; if that is not enough, the invoke
//! is throttled with a clear reason instead of the host running out of memory.
//!
//! The measure is the kernel's `MemAvailable`, read only on the cold-start path: idle
//! environments of small functions use a few MB whatever their configured MemorySize, so
//! counting configured sizes would refuse hosts that have plenty of room. Environments
//! still starting do not show in `MemAvailable` yet, so each cold start *claims* its
//! MemorySize ([`StartingMemory`]) until it is ready, and is admitted only if the host has
//! room for it beyond what the others starting at the same time have claimed: a burst of
//! simultaneous cold starts cannot all count the same free memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The memory one more environment needs, and what the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    pub available_mb: u64,
    pub needed_mb: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct HostMemory {
    /// Kept free for the server and the rest of the system.
    pub reserve_mb: u64,
}

impl HostMemory {
    /// The reserve when none is configured: 5% of the host's memory, at least 256 MB.
    pub fn default_reserve_mb() -> u64 {
        meminfo_mb("MemTotal:").map_or(256, |total| (total / 20).max(256))
    }

    /// Whether an environment of `memory_mb` fits now, beside `claimed_mb` promised to
    /// other environments still starting.
    pub fn admit(&self, memory_mb: u32, claimed_mb: u64) -> Result<(), Shortfall> {
        decide(
            meminfo_mb("MemAvailable:"),
            claimed_mb,
            memory_mb,
            self.reserve_mb,
        )
    }
}

fn decide(
    available_mb: Option<u64>,
    claimed_mb: u64,
    memory_mb: u32,
    reserve_mb: u64,
) -> Result<(), Shortfall> {
    let needed_mb = u64::from(memory_mb) + reserve_mb;
    match available_mb {
        // Without /proc/meminfo there is nothing to go by; the cgroup limits still hold.
        None => Ok(()),
        Some(available_mb) => {
            let available_mb = available_mb.saturating_sub(claimed_mb);
            if available_mb >= needed_mb {
                Ok(())
            } else {
                Err(Shortfall {
                    available_mb,
                    needed_mb,
                })
            }
        }
    }
}

/// The MemorySize claimed by environments that are still starting.
#[derive(Debug, Default)]
pub struct StartingMemory {
    claimed_mb: AtomicU64,
}

impl StartingMemory {
    /// Claims `memory_mb` until the claim is dropped.
    pub fn claim(self: &Arc<Self>, memory_mb: u32) -> MemoryClaim {
        let mb = u64::from(memory_mb);
        self.claimed_mb.fetch_add(mb, Ordering::SeqCst);
        MemoryClaim {
            starting: self.clone(),
            mb,
        }
    }
}

/// One starting environment's claim; released when it is ready (or failed).
#[derive(Debug)]
pub struct MemoryClaim {
    starting: Arc<StartingMemory>,
    mb: u64,
}

impl MemoryClaim {
    /// What the other environments starting now have claimed.
    pub fn others_mb(&self) -> u64 {
        self.starting
            .claimed_mb
            .load(Ordering::SeqCst)
            .saturating_sub(self.mb)
    }
}

impl Drop for MemoryClaim {
    fn drop(&mut self) {
        self.starting
            .claimed_mb
            .fetch_sub(self.mb, Ordering::SeqCst);
    }
}

fn meminfo_mb(field: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_hosts_memory() {
        let total = meminfo_mb("MemTotal:").expect("linux has /proc/meminfo");
        assert!(total > 0);
        assert!(HostMemory { reserve_mb: 0 }.admit(1, 0).is_ok());
        let shortfall = HostMemory {
            reserve_mb: total * 2,
        }
        .admit(128, 0)
        .unwrap_err();
        assert_eq!(shortfall.needed_mb, total * 2 + 128);
        assert!(shortfall.available_mb <= total);
    }

    /// Environments starting together cannot count the same free memory twice.
    #[test]
    fn simultaneous_cold_starts_claim_their_memory() {
        let starting = Arc::new(StartingMemory::default());
        let first = starting.claim(1024);
        let second = starting.claim(1024);
        assert_eq!((first.others_mb(), second.others_mb()), (1024, 1024));
        // 3 GB free, 512 MB reserve: one 1 GB start fits beside another, not beside two.
        assert!(decide(Some(3072), second.others_mb(), 1024, 512).is_ok());
        let third = starting.claim(1024);
        assert_eq!(
            decide(Some(3072), third.others_mb(), 1024, 512),
            Err(Shortfall {
                available_mb: 1024,
                needed_mb: 1536
            })
        );
        drop(first);
        drop(second);
        assert_eq!(third.others_mb(), 0);
        drop(third);
        assert_eq!(starting.claimed_mb.load(Ordering::SeqCst), 0);
        assert!(
            decide(None, 10_000, 1024, 512).is_ok(),
            "no meminfo, no refusal"
        );
    }
}
