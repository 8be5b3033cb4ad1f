//! Admission by host memory: a new execution environment starts only if the host could
//! give it all the memory its function may use, beyond a reserve kept for the server and
//! the system. Idle environments are reclaimed first; if that is not enough, the invoke
//! is throttled with a clear reason instead of the host running out of memory.
//!
//! The measure is the kernel's `MemAvailable`, read only on the cold-start path: idle
//! environments of small functions use a few MB whatever their configured MemorySize, so
//! counting configured sizes would refuse hosts that have plenty of room.

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

    /// Whether an environment of `memory_mb` fits now.
    pub fn admit(&self, memory_mb: u32) -> Result<(), Shortfall> {
        let needed_mb = u64::from(memory_mb) + self.reserve_mb;
        match meminfo_mb("MemAvailable:") {
            // Without /proc/meminfo there is nothing to go by; the cgroup limits still hold.
            None => Ok(()),
            Some(available_mb) if available_mb >= needed_mb => Ok(()),
            Some(available_mb) => Err(Shortfall {
                available_mb,
                needed_mb,
            }),
        }
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
        assert!(HostMemory { reserve_mb: 0 }.admit(1).is_ok());
        let shortfall = HostMemory {
            reserve_mb: total * 2,
        }
        .admit(128)
        .unwrap_err();
        assert_eq!(shortfall.needed_mb, total * 2 + 128);
        assert!(shortfall.available_mb <= total);
    }
}
