//! One cgroup per environment: memory = MemorySize (no swap), CPU ∝ memory, a pids cap.
//!
//! Two layouts are supported, detected from `/proc/self/mountinfo` at start-up:
//! * **v1** (this development machine): controllers mounted separately at
//!   `/sys/fs/cgroup/{memory,cpu,pids}`, usually beside a controller-less cgroup2 mount
//!   (`/sys/fs/cgroup/unified`). The environment gets a directory in each hierarchy; if the
//!   cgroup2 mount exists it gets one there too, because `cgroup.kill` works there and
//!   `clone3(CLONE_INTO_CGROUP)` can target it.
//! * **v2** (a production host): one directory with `memory.max`, `cpu.max`, `pids.max`,
//!   `memory.oom.group` (the kernel kills the whole group on OOM), entered at `clone3` time
//!   with `CLONE_INTO_CGROUP`, which avoids the 5–16 ms migration cost measured on this
//!   machine for moving a running process.
//!
//! Moving a running task into a cgroup (v1 always) waits for an RCU grace period unless a
//! cgroup hierarchy carries the `favordynmods` mount option; [`favordynmods`] computes the
//! remount that adds it while keeping every other option, and the sandbox applies it when
//! it opens.
//!
//! The directories and values are computed by pure functions ([`EnvCgroup::plan`],
//! [`EnvCgroup::limit_writes`]) and applied through [`CgroupFs`], so they are unit-tested
//! with a recording double.

use std::io;
use std::path::{Path, PathBuf};

use crate::SandboxError;

/// Lambda gives one full vCPU at 1,769 MB and CPU in proportion below and above.
pub(crate) const MB_PER_VCPU: u64 = 1769;
/// The CFS period. Shorter periods measured worse here (see SANDBOX-NOTES.md).
pub(crate) const CFS_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas below 1 ms.
const MIN_CFS_QUOTA_US: u64 = 1_000;
/// Enough for any runtime and its helpers; stops fork bombs.
pub(crate) const PIDS_MAX: u32 = 1024;

/// CPU quota per [`CFS_PERIOD_US`] for an environment of `memory_mb`.
pub(crate) fn cpu_quota_us(memory_mb: u32) -> u64 {
    (u64::from(memory_mb) * CFS_PERIOD_US / MB_PER_VCPU).max(MIN_CFS_QUOTA_US)
}

/// The cgroup file system, narrowed to what the sandbox does with it.
pub(crate) trait CgroupFs: Send + Sync + std::fmt::Debug {
    /// Creates a directory; an existing one is fine.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<String>;
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
}

/// The real `/sys/fs/cgroup`.
#[derive(Debug)]
pub(crate) struct RealCgroupFs;

impl CgroupFs for RealCgroupFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // One write(2) per value: cgroup files take the value from a single write.
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(value.as_bytes())
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
}

/// Where the controllers live on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CgroupLayout {
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
        /// A cgroup2 mount without controllers (hybrid layout), used for `cgroup.kill`.
        unified: Option<PathBuf>,
    },
    V2 {
        root: PathBuf,
    },
}

impl CgroupLayout {
    /// Finds the layout from `/proc/self/mountinfo` text. `v2_controllers` reads a cgroup2
    /// mount's `cgroup.controllers`.
    pub(crate) fn detect(
        mountinfo: &str,
        v2_controllers: impl Fn(&Path) -> Option<String>,
    ) -> Result<CgroupLayout, String> {
        let (mut memory, mut cpu, mut pids, mut unified) = (None, None, None, None);
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or("");
            let super_opts = right.nth(1).unwrap_or("");
            match fstype {
                "cgroup2" if unified.is_none() => unified = Some(PathBuf::from(mount_point)),
                "cgroup" => {
                    for opt in super_opts.split(',') {
                        let slot = match opt {
                            "memory" => &mut memory,
                            "cpu" => &mut cpu,
                            "pids" => &mut pids,
                            _ => continue,
                        };
                        if slot.is_none() {
                            *slot = Some(PathBuf::from(mount_point));
                        }
                    }
                }
                _ => {}
            }
        }
        if let (Some(memory), Some(cpu), Some(pids)) = (memory.clone(), cpu.clone(), pids.clone()) {
            return Ok(CgroupLayout::V1 {
                memory,
                cpu,
                pids,
                unified,
            });
        }
        if let Some(root) = unified {
            let controllers = v2_controllers(&root).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if has("memory") && has("cpu") && has("pids") {
                return Ok(CgroupLayout::V2 { root });
            }
            return Err(format!(
                "the cgroup2 mount {} offers controllers {:?}; memory, cpu and pids are needed",
                root.display(),
                controllers.trim()
            ));
        }
        Err(format!(
            "no usable cgroups: v1 memory={memory:?} cpu={cpu:?} pids={pids:?} and no cgroup2 mount"
        ))
    }

    /// One line for the start-up log.
    pub(crate) fn describe(&self) -> String {
        match self {
            CgroupLayout::V1 {
                unified: Some(_), ..
            } => "cgroup v1 memory+cpu+pids (+cgroup2 kill)".into(),
            CgroupLayout::V1 { unified: None, .. } => "cgroup v1 memory+cpu+pids".into(),
            CgroupLayout::V2 { .. } => "cgroup v2 memory+cpu+pids".into(),
        }
    }

    /// Every hierarchy root the environment cgroups live under.
    pub(crate) fn hierarchy_roots(&self) -> Vec<PathBuf> {
        match self {
            CgroupLayout::V1 {
                memory,
                cpu,
                pids,
                unified,
            } => {
                let mut roots = vec![memory.clone(), cpu.clone(), pids.clone()];
                roots.extend(unified.clone());
                roots
            }
            CgroupLayout::V2 { root } => vec![root.clone()],
        }
    }

    /// Creates `parent` in every hierarchy (enabling the controllers for its children on
    /// v2) and removes environments a previous, crashed server left behind.
    pub(crate) fn prepare_parent(
        &self,
        fs: &dyn CgroupFs,
        parent: &str,
    ) -> Result<(), SandboxError> {
        let parent = parent.trim_matches('/');
        for root in self.hierarchy_roots() {
            let mut dir = root.clone();
            for part in parent.split('/').filter(|p| !p.is_empty()) {
                if matches!(self, CgroupLayout::V2 { .. }) {
                    let control = dir.join("cgroup.subtree_control");
                    fs.write(&control, "+memory +cpu +pids").map_err(|source| {
                        SandboxError::Cgroup {
                            action:
                                "enabling +memory +cpu +pids (is this cgroup delegated to lamina?)"
                                    .into(),
                            path: control.clone(),
                            source,
                        }
                    })?;
                }
                dir.push(part);
                fs.create_dir(&dir).map_err(|source| SandboxError::Cgroup {
                    action: "creating the parent cgroup".into(),
                    path: dir.clone(),
                    source,
                })?;
            }
            if matches!(self, CgroupLayout::V2 { .. }) {
                let control = dir.join("cgroup.subtree_control");
                fs.write(&control, "+memory +cpu +pids").map_err(|source| {
                    SandboxError::Cgroup {
                        action: "enabling +memory +cpu +pids".into(),
                        path: control.clone(),
                        source,
                    }
                })?;
            }
        }
        Ok(())
    }

    /// Names of the environment cgroups under `parent` in the first hierarchy (leftovers
    /// after a crash). Real file system only.
    /// Removes the parent cgroup a sandbox created, once its environments are gone; a
    /// parent still in use (another environment, another cgroup) is left alone.
    pub(crate) fn remove_parent(&self, fs: &dyn CgroupFs, parent: &str) {
        for root in self.hierarchy_roots() {
            let _ = fs.remove_dir(&root.join(parent.trim_matches('/')));
        }
    }

    pub(crate) fn stale_environments(&self, parent: &str) -> Vec<String> {
        let root = &self.hierarchy_roots()[0];
        let Ok(entries) = std::fs::read_dir(root.join(parent.trim_matches('/'))) else {
            return vec![];
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }
}

/// One file write that sets a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupWrite {
    pub path: PathBuf,
    pub value: String,
    /// Optional writes (swap, burst, oom.group) are skipped where the kernel lacks them.
    pub required: bool,
}

/// The cgroup directories of one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvCgroup {
    pub layout: CgroupLayout,
    /// Every directory, created in this order and removed in reverse.
    pub dirs: Vec<PathBuf>,
    /// A cgroup2 directory `clone3(CLONE_INTO_CGROUP)` can place the child into.
    pub clone_into: Option<PathBuf>,
    /// v1 directories the child must be moved into after clone (`cgroup.procs`).
    pub join_after_clone: Vec<PathBuf>,
    pub memory_dir: PathBuf,
    /// Where `cgroup.kill` exists (v2, or the hybrid cgroup2 mount).
    pub kill_dir: Option<PathBuf>,
    pub pids_dir: PathBuf,
}

impl EnvCgroup {
    pub(crate) fn plan(layout: &CgroupLayout, parent: &str, environment_id: &str) -> EnvCgroup {
        let rel = Path::new(parent.trim_matches('/')).join(environment_id);
        match layout {
            CgroupLayout::V1 {
                memory,
                cpu,
                pids,
                unified,
            } => {
                let (memory_dir, cpu_dir, pids_dir) =
                    (memory.join(&rel), cpu.join(&rel), pids.join(&rel));
                let unified_dir = unified.as_ref().map(|u| u.join(&rel));
                let mut dirs = vec![memory_dir.clone(), cpu_dir.clone(), pids_dir.clone()];
                dirs.extend(unified_dir.clone());
                EnvCgroup {
                    layout: layout.clone(),
                    dirs,
                    clone_into: unified_dir.clone(),
                    join_after_clone: vec![memory_dir.clone(), cpu_dir, pids_dir.clone()],
                    memory_dir,
                    kill_dir: unified_dir,
                    pids_dir,
                }
            }
            CgroupLayout::V2 { root } => {
                let dir = root.join(&rel);
                EnvCgroup {
                    layout: layout.clone(),
                    dirs: vec![dir.clone()],
                    clone_into: Some(dir.clone()),
                    join_after_clone: vec![],
                    memory_dir: dir.clone(),
                    kill_dir: Some(dir.clone()),
                    pids_dir: dir,
                }
            }
        }
    }

    /// The limit files and values for an environment of `memory_mb`, in write order.
    pub(crate) fn limit_writes(&self, memory_mb: u32) -> Vec<CgroupWrite> {
        let bytes = (u64::from(memory_mb) * 1024 * 1024).to_string();
        let quota = cpu_quota_us(memory_mb).to_string();
        let w = |dir: &Path, file: &str, value: &str, required: bool| CgroupWrite {
            path: dir.join(file),
            value: value.to_owned(),
            required,
        };
        match &self.layout {
            CgroupLayout::V1 { .. } => {
                let (mem, cpu, pids) = (
                    &self.join_after_clone[0],
                    &self.join_after_clone[1],
                    &self.pids_dir,
                );
                vec![
                    w(mem, "memory.limit_in_bytes", &bytes, true),
                    // Swap off: memory+swap capped at the same value (needs swap accounting).
                    w(mem, "memory.memsw.limit_in_bytes", &bytes, false),
                    w(mem, "memory.swappiness", "0", false),
                    w(cpu, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string(), true),
                    w(cpu, "cpu.cfs_quota_us", &quota, true),
                    // Lets an idle environment bank one period's quota for start-up bursts.
                    w(cpu, "cpu.cfs_burst_us", &quota, false),
                    w(pids, "pids.max", &PIDS_MAX.to_string(), true),
                ]
            }
            CgroupLayout::V2 { .. } => {
                let dir = &self.memory_dir;
                vec![
                    w(dir, "memory.max", &bytes, true),
                    w(dir, "memory.swap.max", "0", false),
                    w(dir, "memory.oom.group", "1", false),
                    w(dir, "cpu.max", &format!("{quota} {CFS_PERIOD_US}"), true),
                    w(dir, "cpu.max.burst", &quota, false),
                    w(dir, "pids.max", &PIDS_MAX.to_string(), true),
                ]
            }
        }
    }

    /// Creates the directories and writes the limits.
    pub(crate) fn create(&self, fs: &dyn CgroupFs, memory_mb: u32) -> Result<(), SandboxError> {
        for dir in &self.dirs {
            fs.create_dir(dir).map_err(|source| SandboxError::Cgroup {
                action: "creating the environment cgroup".into(),
                path: dir.clone(),
                source,
            })?;
        }
        write_limits(fs, self.limit_writes(memory_mb))
    }

    /// Changes the limits of a running environment from those of `from_mb` to those of
    /// `to_mb` (its usage must be below the new ones). The CPU burst goes to 0 first, as
    /// the kernel refuses a quota below the burst; v1's memory+swap limit must never be
    /// below the memory limit, so it moves first when raising and last when lowering.
    pub(crate) fn change_limits(
        &self,
        fs: &dyn CgroupFs,
        from_mb: u32,
        to_mb: u32,
    ) -> Result<(), SandboxError> {
        let burst = match &self.layout {
            CgroupLayout::V1 { .. } => self.join_after_clone[1].join("cpu.cfs_burst_us"),
            CgroupLayout::V2 { .. } => self.memory_dir.join("cpu.max.burst"),
        };
        // Optional, as the burst itself is (kernels before 5.14 have none).
        let _ = fs.write(&burst, "0");
        let mut writes = self.limit_writes(to_mb);
        if to_mb > from_mb
            && let Some(memsw) = writes
                .iter()
                .position(|w| w.path.ends_with("memory.memsw.limit_in_bytes"))
        {
            let memsw = writes.remove(memsw);
            writes.insert(0, memsw);
        }
        write_limits(fs, writes)
    }

    /// The `cgroup.procs` files the init's pid is written to after the clone (by the
    /// spawner, [`crate::spawner`]): the v1 hierarchies `clone3` cannot place it in, and
    /// separately the cgroup2 one for kernels without `CLONE_INTO_CGROUP`.
    pub(crate) fn procs_to_join(&self) -> (Vec<PathBuf>, Option<PathBuf>) {
        let procs = |dir: &PathBuf| dir.join("cgroup.procs");
        (
            self.join_after_clone.iter().map(procs).collect(),
            self.clone_into.as_ref().map(procs),
        )
    }

    /// Kills every process in the environment's cgroup.
    pub(crate) fn kill_all(&self, fs: &dyn CgroupFs) {
        if let Some(dir) = &self.kill_dir
            && fs.write(&dir.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        // Plain v1: signal each member; they cannot fork faster than we kill because
        // the init (PID 1 of the namespace) is killed too and takes the namespace along.
        for _ in 0..3 {
            let Ok(procs) = fs.read(&self.pids_dir.join("cgroup.procs")) else {
                return;
            };
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// How many times the kernel's OOM killer fired in this environment.
    pub(crate) fn oom_kills(&self, fs: &dyn CgroupFs) -> u64 {
        let file = match self.layout {
            CgroupLayout::V1 { .. } => "memory.oom_control",
            CgroupLayout::V2 { .. } => "memory.events",
        };
        fs.read(&self.memory_dir.join(file))
            .ok()
            .and_then(|text| parse_counter(&text, "oom_kill"))
            .unwrap_or(0)
    }

    /// The files that report peak memory use, best first (`memory.peak` is missing before
    /// Linux 5.19; `memory.current` is then the nearest thing).
    pub(crate) fn peak_memory_files(&self) -> Vec<PathBuf> {
        let files: &[&str] = match self.layout {
            CgroupLayout::V1 { .. } => &["memory.max_usage_in_bytes"],
            CgroupLayout::V2 { .. } => &["memory.peak", "memory.current"],
        };
        files.iter().map(|f| self.memory_dir.join(f)).collect()
    }

    /// Peak memory use in bytes.
    pub(crate) fn peak_memory(&self, fs: &dyn CgroupFs) -> Option<u64> {
        self.peak_memory_files()
            .iter()
            .find_map(|f| fs.read(f).ok())
            .and_then(|text| text.trim().parse().ok())
    }

    /// Removes the directories. The processes must be gone (reaped); `rmdir` of a cgroup
    /// whose last task is still exiting fails with EBUSY for a moment, so it retries.
    pub(crate) fn remove(&self, fs: &dyn CgroupFs) -> Result<(), SandboxError> {
        let mut first_error = None;
        for dir in self.dirs.iter().rev() {
            let mut attempt = 0;
            loop {
                match fs.remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 200 => {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(source) => {
                        first_error.get_or_insert(SandboxError::Cgroup {
                            action: "removing the environment cgroup".into(),
                            path: dir.clone(),
                            source,
                        });
                        break;
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// What to do about `favordynmods` (see [`favordynmods`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FavorDynmods {
    /// The chosen hierarchy already has it.
    AlreadyOn { mount_point: PathBuf },
    /// Remount it with these arguments.
    Remount(Remount),
}

/// Arguments of one `mount(NULL, mount_point, NULL, flags, data)` remount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remount {
    pub mount_point: PathBuf,
    /// `MS_REMOUNT` plus the mount's existing per-mount flags.
    pub flags: libc::c_ulong,
    /// The existing super options (without `rw`/`ro`) plus `favordynmods`.
    pub data: String,
}

/// `MS_NOSYMFOLLOW` (Linux 5.10), missing from older `libc` crates.
const MS_NOSYMFOLLOW: libc::c_ulong = 256;

/// Writes limits in order; a required one that fails fails them all.
fn write_limits(fs: &dyn CgroupFs, writes: Vec<CgroupWrite>) -> Result<(), SandboxError> {
    for write in writes {
        match fs.write(&write.path, &write.value) {
            Ok(()) => {}
            Err(source) if write.required => {
                return Err(SandboxError::Cgroup {
                    action: format!("writing {:?}", write.value),
                    path: write.path,
                    source,
                });
            }
            Err(err) => {
                tracing::debug!(path = %write.path.display(), %err, "optional cgroup setting skipped")
            }
        }
    }
    Ok(())
}

/// Moving a task into a cgroup takes `cgroup_threadgroup_rwsem`, a percpu rwsem whose
/// writers wait for an RCU grace period: 5-18 ms per environment start on v1 hosts
/// (sandbox_bench: median 14.5 ms without, 4.9 ms with; p99 53 ms -> 8 ms). The cgroup2
/// mount option `favordynmods` switches the semaphore to a mode without that wait. The
/// semaphore is global, so the option on any hierarchy helps all of them.
///
/// Picks the first cgroup2 mount in `mountinfo` (else the first v1 hierarchy; the v1
/// kernel code refuses option changes on remount, so that attempt usually fails and is
/// only logged) and computes the remount that adds `favordynmods` while keeping
/// everything else: a remount *replaces* the super options, so `nsdelegate`,
/// `memory_recursiveprot` etc. are passed again, and the per-mount flags
/// (`nosuid,nodev,noexec,relatime,ro`...) become `MS_*` flags, since a remount sets those
/// too.
pub(crate) fn favordynmods(mountinfo: &str) -> Result<FavorDynmods, String> {
    let mut v1 = None;
    let mut v2 = None;
    for line in mountinfo.lines() {
        match line
            .split_once(" - ")
            .and_then(|(_, right)| right.split(' ').next())
        {
            Some("cgroup2") if v2.is_none() => v2 = Some(line),
            Some("cgroup") if v1.is_none() => v1 = Some(line),
            _ => {}
        }
    }
    let line = v2.or(v1).ok_or("no cgroup mount in /proc/self/mountinfo")?;
    favordynmods_for(line)
}

/// [`favordynmods`] for one mountinfo line.
pub(crate) fn favordynmods_for(line: &str) -> Result<FavorDynmods, String> {
    let bad = || format!("unexpected mountinfo line {line:?}");
    let (left, right) = line.split_once(" - ").ok_or_else(bad)?;
    let mut left = left.split(' ');
    let mount_point = unescape_mountinfo(left.nth(4).ok_or_else(bad)?);
    let mount_opts = left.next().ok_or_else(bad)?;
    let super_opts = right.split(' ').nth(2).ok_or_else(bad)?;
    let super_opts: Vec<&str> = super_opts.split(',').collect();
    if super_opts.contains(&"favordynmods") {
        return Ok(FavorDynmods::AlreadyOn { mount_point });
    }
    let mut flags = libc::MS_REMOUNT;
    let mut atime = false;
    let mut mount_ro = false;
    for opt in mount_opts.split(',') {
        flags |= match opt {
            "ro" => {
                mount_ro = true;
                libc::MS_RDONLY
            }
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "nosymfollow" => MS_NOSYMFOLLOW,
            "relatime" | "noatime" | "nodiratime" => {
                atime = true;
                match opt {
                    "relatime" => libc::MS_RELATIME,
                    "noatime" => libc::MS_NOATIME,
                    _ => libc::MS_NODIRATIME,
                }
            }
            _ => 0,
        };
    }
    if !atime {
        // mountinfo shows no atime option for the default strictatime.
        flags |= libc::MS_STRICTATIME;
    }
    // MS_RDONLY applies to the mount *and* the superblock: a read-only mount of a
    // read-write superblock (a container's view) cannot be remounted without changing
    // one of them, and cgroups could not be created there anyway.
    let super_ro = super_opts.first() == Some(&"ro");
    if mount_ro != super_ro {
        return Err(format!(
            "{} is mounted {} on a {} cgroup file system; not remounting it",
            mount_point.display(),
            if mount_ro { "read-only" } else { "read-write" },
            if super_ro { "read-only" } else { "read-write" },
        ));
    }
    let mut data: Vec<&str> = super_opts
        .into_iter()
        .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
        .collect();
    data.push("favordynmods");
    Ok(FavorDynmods::Remount(Remount {
        mount_point,
        flags,
        data: data.join(","),
    }))
}

/// Decodes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Reads `key N` from a flat-keyed cgroup file.
pub(crate) fn parse_counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Records every call; reads answer from a map.
    #[derive(Debug, Default)]
    pub(crate) struct RecordingCgroupFs {
        pub calls: Mutex<Vec<String>>,
        pub files: Mutex<HashMap<PathBuf, String>>,
        pub refuse: Vec<&'static str>,
    }

    impl CgroupFs for RecordingCgroupFs {
        fn create_dir(&self, path: &Path) -> io::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("mkdir {}", path.display()));
            Ok(())
        }
        fn write(&self, path: &Path, value: &str) -> io::Result<()> {
            if self.refuse.iter().any(|r| path.ends_with(r)) {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.calls
                .lock()
                .unwrap()
                .push(format!("write {} {value}", path.display()));
            Ok(())
        }
        fn read(&self, path: &Path) -> io::Result<String> {
            self.files
                .lock()
                .unwrap()
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
        }
        fn remove_dir(&self, path: &Path) -> io::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("rmdir {}", path.display()));
            Ok(())
        }
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PURE_V2: &str = "35 25 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";

    fn hybrid() -> CgroupLayout {
        CgroupLayout::detect(HYBRID, |_| Some(String::new())).unwrap()
    }
    fn v2() -> CgroupLayout {
        CgroupLayout::detect(PURE_V2, |_| Some("cpuset cpu io memory pids".into())).unwrap()
    }

    #[test]
    fn detects_hybrid_v1_and_pure_v2() {
        assert_eq!(
            hybrid(),
            CgroupLayout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: "/sys/fs/cgroup/cpu".into(),
                pids: "/sys/fs/cgroup/pids".into(),
                unified: Some("/sys/fs/cgroup/unified".into()),
            }
        );
        assert_eq!(
            v2(),
            CgroupLayout::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        let err = CgroupLayout::detect(PURE_V2, |_| Some("cpu io".into())).unwrap_err();
        assert!(err.contains("memory, cpu and pids"), "{err}");
    }

    #[test]
    fn cpu_is_proportional_to_memory_like_lambda() {
        assert_eq!(cpu_quota_us(1769), 100_000);
        assert_eq!(cpu_quota_us(128), 7_235);
        assert_eq!(cpu_quota_us(3538), 200_000);
        assert_eq!(cpu_quota_us(10), MIN_CFS_QUOTA_US);
    }

    #[test]
    fn v1_plan_creates_every_hierarchy_and_joins_after_clone() {
        let cg = EnvCgroup::plan(&hybrid(), "lamina", "env-1");
        assert_eq!(
            cg.clone_into,
            Some("/sys/fs/cgroup/unified/lamina/env-1".into())
        );
        assert_eq!(cg.kill_dir, cg.clone_into);
        assert_eq!(cg.join_after_clone.len(), 3);
        let fs = RecordingCgroupFs {
            refuse: vec!["memory.memsw.limit_in_bytes"],
            ..Default::default()
        };
        cg.create(&fs, 128).unwrap();
        let (join, fallback) = cg.procs_to_join();
        for procs in join {
            fs.write(&procs, "42").unwrap();
        }
        assert_eq!(
            fallback,
            Some("/sys/fs/cgroup/unified/lamina/env-1/cgroup.procs".into())
        );
        let calls = fs.calls.lock().unwrap().join("\n");
        assert_eq!(
            calls,
            "\
mkdir /sys/fs/cgroup/memory/lamina/env-1
mkdir /sys/fs/cgroup/cpu/lamina/env-1
mkdir /sys/fs/cgroup/pids/lamina/env-1
mkdir /sys/fs/cgroup/unified/lamina/env-1
write /sys/fs/cgroup/memory/lamina/env-1/memory.limit_in_bytes 134217728
write /sys/fs/cgroup/memory/lamina/env-1/memory.swappiness 0
write /sys/fs/cgroup/cpu/lamina/env-1/cpu.cfs_period_us 100000
write /sys/fs/cgroup/cpu/lamina/env-1/cpu.cfs_quota_us 7235
write /sys/fs/cgroup/cpu/lamina/env-1/cpu.cfs_burst_us 7235
write /sys/fs/cgroup/pids/lamina/env-1/pids.max 1024
write /sys/fs/cgroup/memory/lamina/env-1/cgroup.procs 42
write /sys/fs/cgroup/cpu/lamina/env-1/cgroup.procs 42
write /sys/fs/cgroup/pids/lamina/env-1/cgroup.procs 42"
        );
    }

    #[test]
    fn v2_plan_uses_one_directory_and_clone_into_cgroup() {
        let cg = EnvCgroup::plan(&v2(), "/lamina/", "e");
        assert!(cg.join_after_clone.is_empty());
        let writes: Vec<String> = cg
            .limit_writes(1769)
            .into_iter()
            .map(|w| format!("{} {}", w.path.display(), w.value))
            .collect();
        assert_eq!(
            writes,
            [
                "/sys/fs/cgroup/lamina/e/memory.max 1854930944",
                "/sys/fs/cgroup/lamina/e/memory.swap.max 0",
                "/sys/fs/cgroup/lamina/e/memory.oom.group 1",
                "/sys/fs/cgroup/lamina/e/cpu.max 100000 100000",
                "/sys/fs/cgroup/lamina/e/cpu.max.burst 100000",
                "/sys/fs/cgroup/lamina/e/pids.max 1024",
            ]
        );
    }

    #[test]
    fn changing_limits_never_puts_v1_memory_above_memsw_nor_a_quota_below_its_burst() {
        let cg = EnvCgroup::plan(&hybrid(), "lamina", "env-1");
        let changes = |from, to| {
            let fs = RecordingCgroupFs::default();
            cg.change_limits(&fs, from, to).unwrap();
            let calls = fs.calls.lock().unwrap().clone();
            calls
                .iter()
                .filter(|c| c.contains("memory.") && c.contains("limit") || c.contains("cfs_"))
                .map(|c| c.rsplit('/').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            changes(1769, 128),
            [
                "cpu.cfs_burst_us 0",
                "memory.limit_in_bytes 134217728",
                "memory.memsw.limit_in_bytes 134217728",
                "cpu.cfs_period_us 100000",
                "cpu.cfs_quota_us 7235",
                "cpu.cfs_burst_us 7235",
            ]
        );
        assert_eq!(
            changes(1769, 3538),
            [
                "cpu.cfs_burst_us 0",
                "memory.memsw.limit_in_bytes 3709861888",
                "memory.limit_in_bytes 3709861888",
                "cpu.cfs_period_us 100000",
                "cpu.cfs_quota_us 200000",
                "cpu.cfs_burst_us 200000",
            ]
        );
    }

    #[test]
    fn a_refused_required_limit_is_an_error_naming_the_file() {
        let cg = EnvCgroup::plan(&v2(), "lamina", "e");
        let fs = RecordingCgroupFs {
            refuse: vec!["memory.max"],
            ..Default::default()
        };
        let err = cg.create(&fs, 128).unwrap_err().to_string();
        assert!(err.contains("/sys/fs/cgroup/lamina/e/memory.max"), "{err}");
    }

    #[test]
    fn v2_parent_enables_controllers_at_every_level() {
        let fs = RecordingCgroupFs::default();
        v2().prepare_parent(&fs, "lamina").unwrap();
        assert_eq!(
            fs.calls.lock().unwrap().clone(),
            [
                "write /sys/fs/cgroup/cgroup.subtree_control +memory +cpu +pids",
                "mkdir /sys/fs/cgroup/lamina",
                "write /sys/fs/cgroup/lamina/cgroup.subtree_control +memory +cpu +pids",
            ]
        );
    }

    fn remount(line: &str) -> Remount {
        match favordynmods_for(line).unwrap() {
            FavorDynmods::Remount(r) => r,
            other => panic!("expected a remount, got {other:?}"),
        }
    }

    #[test]
    fn favordynmods_keeps_systemds_super_options_and_mount_flags() {
        let r = remount(
            "35 25 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot",
        );
        assert_eq!(r.mount_point, Path::new("/sys/fs/cgroup"));
        assert_eq!(
            r.flags,
            libc::MS_REMOUNT
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC
                | libc::MS_RELATIME
        );
        assert_eq!(r.data, "nsdelegate,memory_recursiveprot,favordynmods");
    }

    #[test]
    fn favordynmods_on_a_hybrid_host_picks_the_cgroup2_mount() {
        let plan = favordynmods(HYBRID).unwrap();
        assert_eq!(
            plan,
            FavorDynmods::Remount(Remount {
                mount_point: "/sys/fs/cgroup/unified".into(),
                flags: libc::MS_REMOUNT | libc::MS_RELATIME,
                data: "favordynmods".into(),
            })
        );
        let already = HYBRID.replace("cgroup2 cgroup2 rw\n", "cgroup2 cgroup2 rw,favordynmods\n");
        assert_eq!(
            favordynmods(&already).unwrap(),
            FavorDynmods::AlreadyOn {
                mount_point: "/sys/fs/cgroup/unified".into()
            }
        );
        // Already on among other options, in any position.
        assert!(matches!(
            favordynmods_for(
                "1 2 0:3 / /cg rw - cgroup2 none rw,nsdelegate,favordynmods,memory_localevents"
            ),
            Ok(FavorDynmods::AlreadyOn { .. })
        ));
    }

    #[test]
    fn favordynmods_without_cgroup2_tries_the_first_v1_hierarchy() {
        let v1_only: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        let FavorDynmods::Remount(r) = favordynmods(&v1_only).unwrap() else {
            panic!("expected a remount");
        };
        assert_eq!(r.mount_point, Path::new("/sys/fs/cgroup/cpu"));
        // The controller list must be passed again, or the kernel refuses the remount.
        assert_eq!(r.data, "cpu,favordynmods");
        let err = favordynmods("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n").unwrap_err();
        assert!(err.contains("no cgroup mount"), "{err}");
    }

    #[test]
    fn favordynmods_maps_every_per_mount_flag() {
        let r = remount(
            "7 1 0:5 / /a\\040b ro,nosuid,nodev,noexec,noatime,nodiratime,nosymfollow master:1 - cgroup2 cgroup2 ro,nsdelegate",
        );
        assert_eq!(r.mount_point, Path::new("/a b"));
        assert_eq!(
            r.flags,
            libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC
                | libc::MS_NOATIME
                | libc::MS_NODIRATIME
                | MS_NOSYMFOLLOW
        );
        assert_eq!(r.data, "nsdelegate,favordynmods");
        // No atime option shown means strictatime, which must be kept explicitly.
        let r = remount("7 1 0:5 / /cg rw - cgroup2 cgroup2 rw");
        assert_eq!(r.flags, libc::MS_REMOUNT | libc::MS_STRICTATIME);
        // Options with values and v1 names are passed through unchanged.
        let r = remount(
            "40 31 0:37 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:7 - cgroup cgroup rw,xattr,name=systemd",
        );
        assert_eq!(r.data, "xattr,name=systemd,favordynmods");
    }

    #[test]
    fn favordynmods_refuses_a_read_only_view_of_a_writable_hierarchy() {
        let err = favordynmods_for(
            "900 899 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate",
        )
        .unwrap_err();
        assert!(err.contains("read-only"), "{err}");
        assert!(favordynmods_for("garbage").is_err());
        assert!(favordynmods_for("1 2 3 - cgroup2").is_err());
    }

    #[test]
    fn oom_and_peak_are_read_from_the_right_files() {
        let cg = EnvCgroup::plan(&hybrid(), "lamina", "e");
        let fs = RecordingCgroupFs::default();
        fs.files.lock().unwrap().insert(
            "/sys/fs/cgroup/memory/lamina/e/memory.oom_control".into(),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n".into(),
        );
        fs.files.lock().unwrap().insert(
            "/sys/fs/cgroup/memory/lamina/e/memory.max_usage_in_bytes".into(),
            "4096\n".into(),
        );
        assert_eq!(cg.oom_kills(&fs), 2);
        assert_eq!(cg.peak_memory(&fs), Some(4096));
        assert_eq!(
            parse_counter("low 0\noom 1\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
    }
}
