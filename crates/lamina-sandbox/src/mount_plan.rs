//! The environment's root file system, as a list of steps computed in the parent.
//!
//! The child (a raw clone of the spawner, itself a fork of a possibly multi-threaded server)
//! must not allocate: another thread may have held the allocator's lock at fork time. So
//! [`MountPlan::build`] turns the spec into [`MountStep`]s whose C strings are all prepared
//! in the server, the spawner receives them encoded and the child walks borrowed
//! [`MountStepRef`]s decoded in place, through [`MountOps`] (real syscalls in [`SyscallMountOps`]; a recording double in
//! the tests).
//!
//! The root is a small tmpfs (a few KB of directories and the generated `/etc/passwd`),
//! mounted on `state_dir/root` inside the child's private mount namespace — the same host
//! directory for every environment, since each mounts over it in its own namespace. Into it
//! go read-only bind mounts of the host's `/usr` (with `bin lib lib64 sbin -> usr/...`),
//! `/etc/ld.so.cache` and a few harmless `/etc` files, the code at `/var/task`, layers at
//! `/opt`, runtime directories, `/tmp` (see [`crate::tmp_pool`]), a minimal `/dev` and a
//! fresh `/proc`; then `pivot_root`, detach the host's tree, remount `/` read-only.
//! There is deliberately no `/dev/shm`: Lambda has none either.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use libc::c_ulong;

/// The unprivileged user the function runs as (Lambda's `sbx_user1051`).
pub(crate) const SANDBOX_UID: u32 = 993;
pub(crate) const SANDBOX_GID: u32 = 990;

/// One step of building the root. All strings are ready for the syscalls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MountStep {
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
    },
    Mkdir {
        path: CString,
        mode: u32,
    },
    CreateFile {
        path: CString,
        contents: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// `chdir(new_root); pivot_root(".", "."); umount2(".", MNT_DETACH); chdir("/")`.
    PivotRoot {
        new_root: CString,
    },
}

impl MountStep {
    /// A human description, used in errors and in the tests.
    pub(crate) fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            MountStep::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => {
                let mut out = format!(
                    "mount {} on {}",
                    source.as_ref().map_or("none".into(), s),
                    s(target)
                );
                if let Some(t) = fstype {
                    out += &format!(" type {}", s(t));
                }
                out += &format!(" ({})", describe_flags(*flags));
                if let Some(d) = data {
                    out += &format!(" [{}]", s(d));
                }
                out
            }
            MountStep::Mkdir { path, mode } => format!("mkdir {} {mode:o}", s(path)),
            MountStep::CreateFile {
                path,
                contents,
                mode,
            } => {
                format!("create {} {mode:o} ({} bytes)", s(path), contents.len())
            }
            MountStep::Symlink { target, link } => format!("symlink {} -> {}", s(link), s(target)),
            MountStep::PivotRoot { new_root } => format!("pivot_root {}", s(new_root)),
        }
    }
}

fn describe_flags(flags: c_ulong) -> String {
    const NAMES: &[(c_ulong, &str)] = &[
        (libc::MS_REMOUNT, "remount"),
        (libc::MS_BIND, "bind"),
        (libc::MS_REC, "rec"),
        (libc::MS_PRIVATE, "private"),
        (libc::MS_RDONLY, "ro"),
        (libc::MS_NOSUID, "nosuid"),
        (libc::MS_NODEV, "nodev"),
        (libc::MS_NOEXEC, "noexec"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "defaults".into()
    } else {
        names.join(",")
    }
}

/// Facts about the host gathered once when the sandbox opens.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostFacts {
    /// Names under `/usr` that get a top-level symlink (`bin`, `lib`, `lib64`, `sbin`, ...).
    pub usr_links: Vec<&'static str>,
    /// `/etc` files that exist on the host and are bind-mounted read-only.
    pub etc_files: Vec<&'static str>,
    /// `/etc` directories (certificates) that exist and are bind-mounted read-only.
    pub etc_dirs: Vec<&'static str>,
}

const USR_LINKS: &[&str] = &["bin", "sbin", "lib", "lib64", "lib32", "libx32"];
const ETC_FILES: &[&str] = &[
    "ld.so.cache",
    "resolv.conf",
    "hosts",
    "nsswitch.conf",
    "localtime",
];
const ETC_DIRS: &[&str] = &["ssl", "pki", "ca-certificates"];
/// Device nodes bind-mounted from the host into the environment's `/dev`.
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom"];

impl HostFacts {
    pub(crate) fn probe() -> HostFacts {
        let exists = |p: String| Path::new(&p).exists();
        HostFacts {
            usr_links: USR_LINKS
                .iter()
                .copied()
                .filter(|n| exists(format!("/usr/{n}")))
                .collect(),
            etc_files: ETC_FILES
                .iter()
                .copied()
                .filter(|n| Path::new(&format!("/etc/{n}")).is_file())
                .collect(),
            etc_dirs: ETC_DIRS
                .iter()
                .copied()
                .filter(|n| Path::new(&format!("/etc/{n}")).is_dir())
                .collect(),
        }
    }
}

/// What one environment's root is made of.
#[derive(Debug, Clone)]
pub(crate) struct RootSpec<'a> {
    /// `None` for a prepared environment: `/var/task` (and `/opt`) stay empty until
    /// the code is attached (see `crate::PreparedEnvironment`).
    pub task_dir: Option<&'a Path>,
    pub opt_dir: Option<&'a Path>,
    pub runtime_mounts: &'a [(PathBuf, PathBuf)],
    pub tmp: TmpSource<'a>,
}

/// Where `/tmp` comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TmpSource<'a> {
    /// A host directory (the root of a mounted ext4 image), bind-mounted.
    Dir(&'a Path),
    /// A tmpfs of this many MB (fallback; charged to the environment's memory).
    Tmpfs(u32),
}

/// The ordered steps.
#[derive(Debug, Clone)]
pub(crate) struct MountPlan {
    pub steps: Vec<MountStep>,
}

pub(crate) const RO_BIND_REMOUNT: c_ulong =
    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;

pub(crate) fn cstring(path: impl AsRef<Path>) -> Result<CString, String> {
    let path = path.as_ref();
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("path {} contains a NUL byte", path.display()))
}

struct Builder<'a> {
    root: &'a Path,
    steps: Vec<MountStep>,
}

impl Builder<'_> {
    fn inside(&self, sandbox_path: &str) -> PathBuf {
        self.root.join(sandbox_path.trim_start_matches('/'))
    }
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: c_ulong,
        data: Option<&str>,
    ) -> Result<(), String> {
        self.steps.push(MountStep::Mount {
            source: source.map(cstring).transpose()?,
            target: cstring(target)?,
            fstype: fstype.map(cstring).transpose()?,
            flags,
            data: data.map(cstring).transpose()?,
        });
        Ok(())
    }
    fn mkdir(&mut self, sandbox_path: &str) -> Result<(), String> {
        let path = cstring(self.inside(sandbox_path))?;
        self.steps.push(MountStep::Mkdir { path, mode: 0o755 });
        Ok(())
    }
    fn file(&mut self, sandbox_path: &str, contents: &[u8], mode: u32) -> Result<(), String> {
        let path = cstring(self.inside(sandbox_path))?;
        self.steps.push(MountStep::CreateFile {
            path,
            contents: contents.to_vec(),
            mode,
        });
        Ok(())
    }
    fn symlink(&mut self, sandbox_path: &str, target: &str) -> Result<(), String> {
        self.steps.push(MountStep::Symlink {
            target: cstring(target)?,
            link: cstring(self.inside(sandbox_path))?,
        });
        Ok(())
    }
    /// Bind `host` read-only at `sandbox_path` (which must already exist).
    fn bind_ro(&mut self, host: &Path, sandbox_path: &str) -> Result<(), String> {
        let target = self.inside(sandbox_path);
        self.mount(Some(host), &target, None, libc::MS_BIND, None)?;
        self.mount(None, &target, None, RO_BIND_REMOUNT, None)
    }
}

/// Checks a runtime mount's sandbox path: absolute, plain components, not shadowing the
/// directories the sandbox itself provides.
fn check_sandbox_path(path: &Path) -> Result<String, String> {
    let plain = path.is_absolute()
        && path
            .components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)));
    let text = path.to_str().unwrap_or("");
    let reserved = [
        "/",
        "/proc",
        "/dev",
        "/tmp",
        "/usr",
        "/etc",
        "/var/task",
        "/opt",
    ];
    let first = path
        .components()
        .nth(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    if !plain
        || text.is_empty()
        || reserved.contains(&text)
        || matches!(first.as_deref(), Some("proc" | "dev" | "tmp"))
    {
        return Err(format!(
            "runtime mount target {} must be an absolute path outside /proc, /dev and /tmp and not one of {reserved:?}",
            path.display()
        ));
    }
    Ok(text.to_owned())
}

impl MountPlan {
    /// Builds the plan for a root assembled at `root` (a host directory).
    pub(crate) fn build(
        root: &Path,
        facts: &HostFacts,
        spec: &RootSpec<'_>,
    ) -> Result<MountPlan, String> {
        let mut b = Builder {
            root,
            steps: vec![],
        };
        // Nothing we do may propagate back to the host.
        b.mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        )?;
        b.mount(
            Some(Path::new("tmpfs")),
            root,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("size=1m,nr_inodes=1024,mode=0755"),
        )?;
        for dir in [
            "/usr",
            "/etc",
            "/var",
            "/var/task",
            "/opt",
            "/tmp",
            "/proc",
            "/dev",
        ] {
            b.mkdir(dir)?;
        }
        b.bind_ro(Path::new("/usr"), "/usr")?;
        for name in &facts.usr_links {
            b.symlink(name, &format!("usr/{name}"))?;
        }
        for name in &facts.etc_files {
            let at = format!("/etc/{name}");
            b.file(&at, b"", 0o644)?;
            b.bind_ro(Path::new(&at), &at)?;
        }
        for name in &facts.etc_dirs {
            let at = format!("/etc/{name}");
            b.mkdir(&at)?;
            b.bind_ro(Path::new(&at), &at)?;
        }
        let passwd = format!(
            "root:x:0:0:root:/root:/sbin/nologin\nsbx_user1051:x:{SANDBOX_UID}:{SANDBOX_GID}::/tmp:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n"
        );
        let group = format!("root:x:0:\nsbx_user1051:x:{SANDBOX_GID}:\nnobody:x:65534:\n");
        b.file("/etc/passwd", passwd.as_bytes(), 0o644)?;
        b.file("/etc/group", group.as_bytes(), 0o644)?;

        if let Some(task) = spec.task_dir {
            b.bind_ro(task, "/var/task")?;
        }
        if let Some(opt) = spec.opt_dir {
            b.bind_ro(opt, "/opt")?;
        }
        for (host, inside) in spec.runtime_mounts {
            let inside = check_sandbox_path(inside)?;
            let mut partial = String::new();
            for part in inside.split('/').filter(|p| !p.is_empty()) {
                partial.push('/');
                partial.push_str(part);
                // The root already has these (a runtime may need `/etc/java-17-openjdk`).
                if !["/var", "/opt", "/etc"].contains(&partial.as_str()) {
                    b.mkdir(&partial)?;
                }
            }
            b.bind_ro(host, &inside)?;
        }
        // The image is mounted nosuid,nodev on the host; a bind mount keeps those flags.
        match spec.tmp {
            TmpSource::Dir(dir) => {
                b.mount(Some(dir), &b.inside("/tmp"), None, libc::MS_BIND, None)?
            }
            TmpSource::Tmpfs(size_mb) => b.mount(
                Some(Path::new("tmpfs")),
                &b.inside("/tmp"),
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(&format!("size={size_mb}m,mode=1777")),
            )?,
        }

        b.mount(
            Some(Path::new("tmpfs")),
            &b.inside("/dev"),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("size=64k,nr_inodes=64,mode=0755"),
        )?;
        for node in DEV_NODES {
            let at = format!("/dev/{node}");
            b.file(&at, b"", 0o666)?;
            b.mount(
                Some(Path::new(&at)),
                &b.inside(&at),
                None,
                libc::MS_BIND,
                None,
            )?;
        }
        b.symlink("/dev/fd", "/proc/self/fd")?;
        b.symlink("/dev/stdin", "/proc/self/fd/0")?;
        b.symlink("/dev/stdout", "/proc/self/fd/1")?;
        b.symlink("/dev/stderr", "/proc/self/fd/2")?;
        // A fresh /proc: the child is already PID 1 of its own PID namespace.
        b.mount(
            Some(Path::new("proc")),
            &b.inside("/proc"),
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?;
        b.steps.push(MountStep::PivotRoot {
            new_root: cstring(root)?,
        });
        b.mount(None, Path::new("/"), None, RO_BIND_REMOUNT, None)?;
        Ok(MountPlan { steps: b.steps })
    }
}

/// The syscalls the plan needs. Errors are raw errno values: the child cannot allocate.
pub(crate) trait MountOps {
    fn mount(
        &mut self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), i32>;
    fn mkdir(&mut self, path: &CStr, mode: u32) -> Result<(), i32>;
    fn create_file(&mut self, path: &CStr, contents: &[u8], mode: u32) -> Result<(), i32>;
    fn symlink(&mut self, target: &CStr, link: &CStr) -> Result<(), i32>;
    fn pivot_root(&mut self, new_root: &CStr) -> Result<(), i32>;
}

/// A borrowed view of one [`MountStep`]: what the child walks. The spawner decodes these
/// straight out of its request buffer ([`crate::spawner`]), without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MountStepRef<'a> {
    Mount {
        source: Option<&'a CStr>,
        target: &'a CStr,
        fstype: Option<&'a CStr>,
        flags: c_ulong,
        data: Option<&'a CStr>,
    },
    Mkdir {
        path: &'a CStr,
        mode: u32,
    },
    CreateFile {
        path: &'a CStr,
        contents: &'a [u8],
        mode: u32,
    },
    Symlink {
        target: &'a CStr,
        link: &'a CStr,
    },
    PivotRoot {
        new_root: &'a CStr,
    },
}

impl MountStep {
    pub(crate) fn as_ref(&self) -> MountStepRef<'_> {
        match self {
            MountStep::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => MountStepRef::Mount {
                source: source.as_deref(),
                target,
                fstype: fstype.as_deref(),
                flags: *flags,
                data: data.as_deref(),
            },
            MountStep::Mkdir { path, mode } => MountStepRef::Mkdir { path, mode: *mode },
            MountStep::CreateFile {
                path,
                contents,
                mode,
            } => MountStepRef::CreateFile {
                path,
                contents,
                mode: *mode,
            },
            MountStep::Symlink { target, link } => MountStepRef::Symlink { target, link },
            MountStep::PivotRoot { new_root } => MountStepRef::PivotRoot { new_root },
        }
    }
}

/// Runs the plan; on failure returns the index of the failed step and the errno.
/// Allocation-free (the iterator must be too).
pub(crate) fn execute<'a>(
    steps: impl IntoIterator<Item = MountStepRef<'a>>,
    ops: &mut impl MountOps,
) -> Result<(), (usize, i32)> {
    for (index, step) in steps.into_iter().enumerate() {
        let result = match step {
            MountStepRef::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => ops.mount(source, target, fstype, flags, data),
            MountStepRef::Mkdir { path, mode } => ops.mkdir(path, mode),
            MountStepRef::CreateFile {
                path,
                contents,
                mode,
            } => ops.create_file(path, contents, mode),
            MountStepRef::Symlink { target, link } => ops.symlink(target, link),
            MountStepRef::PivotRoot { new_root } => ops.pivot_root(new_root),
        };
        result.map_err(|errno| (index, errno))?;
    }
    Ok(())
}

/// The real syscalls, allocation-free.
#[derive(Debug)]
pub(crate) struct SyscallMountOps;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(ret: libc::c_int) -> Result<(), i32> {
    if ret < 0 { Err(errno()) } else { Ok(()) }
}

fn ptr_or_null(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

impl MountOps for SyscallMountOps {
    fn mount(
        &mut self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), i32> {
        // SAFETY: all pointers are NUL-terminated strings or null, valid for the call.
        check(unsafe {
            libc::mount(
                ptr_or_null(source),
                target.as_ptr(),
                ptr_or_null(fstype),
                flags,
                ptr_or_null(data).cast(),
            )
        })
    }
    fn mkdir(&mut self, path: &CStr, mode: u32) -> Result<(), i32> {
        // SAFETY: `path` is a valid NUL-terminated string.
        check(unsafe { libc::mkdir(path.as_ptr(), mode) })
    }
    fn create_file(&mut self, path: &CStr, contents: &[u8], mode: u32) -> Result<(), i32> {
        // SAFETY: `path` is a valid NUL-terminated string.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                mode,
            )
        };
        check(fd)?;
        let mut written = 0;
        while written < contents.len() {
            // SAFETY: the pointer and length describe the unwritten tail of `contents`.
            let n = unsafe {
                libc::write(
                    fd,
                    contents[written..].as_ptr().cast(),
                    contents.len() - written,
                )
            };
            if n < 0 {
                let e = errno();
                // SAFETY: `fd` was opened above.
                unsafe { libc::close(fd) };
                return Err(e);
            }
            written += n as usize;
        }
        // SAFETY: `fd` was opened above. The root tmpfs ignores umask-free mode fix-ups.
        unsafe {
            libc::fchmod(fd, mode);
            libc::close(fd);
        }
        Ok(())
    }
    fn symlink(&mut self, target: &CStr, link: &CStr) -> Result<(), i32> {
        // SAFETY: both are valid NUL-terminated strings.
        check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
    }
    fn pivot_root(&mut self, new_root: &CStr) -> Result<(), i32> {
        // Stacking the old root under the new one and detaching it avoids needing a
        // `put_old` directory inside the read-only-to-be root.
        let dot = c".";
        // SAFETY: valid NUL-terminated strings; raw syscalls without memory arguments beyond them.
        unsafe {
            check(libc::chdir(new_root.as_ptr()))?;
            check(libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int)?;
            check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            usr_links: vec!["bin", "lib", "lib64"],
            etc_files: vec!["ld.so.cache"],
            etc_dirs: vec!["ssl"],
        }
    }

    #[test]
    fn plan_builds_a_read_only_root_with_the_expected_mounts() {
        let runtime = vec![(PathBuf::from("/srv/rt/python"), PathBuf::from("/var/lang"))];
        let spec = RootSpec {
            task_dir: Some(Path::new("/srv/code/abc")),
            opt_dir: Some(Path::new("/srv/layers/abc")),
            runtime_mounts: &runtime,
            tmp: TmpSource::Dir(Path::new("/state/tmp/7")),
        };
        let plan = MountPlan::build(Path::new("/state/root"), &facts(), &spec).unwrap();
        let steps: Vec<String> = plan.steps.iter().map(MountStep::describe).collect();
        let expected = [
            "mount none on / (rec,private)",
            "mount tmpfs on /state/root type tmpfs (nosuid,nodev) [size=1m,nr_inodes=1024,mode=0755]",
            "mkdir /state/root/usr 755",
            "mkdir /state/root/etc 755",
            "mkdir /state/root/var 755",
            "mkdir /state/root/var/task 755",
            "mkdir /state/root/opt 755",
            "mkdir /state/root/tmp 755",
            "mkdir /state/root/proc 755",
            "mkdir /state/root/dev 755",
            "mount /usr on /state/root/usr (bind)",
            "mount none on /state/root/usr (remount,bind,ro,nosuid,nodev)",
            "symlink /state/root/bin -> usr/bin",
            "symlink /state/root/lib -> usr/lib",
            "symlink /state/root/lib64 -> usr/lib64",
            "create /state/root/etc/ld.so.cache 644 (0 bytes)",
            "mount /etc/ld.so.cache on /state/root/etc/ld.so.cache (bind)",
            "mount none on /state/root/etc/ld.so.cache (remount,bind,ro,nosuid,nodev)",
            "mkdir /state/root/etc/ssl 755",
            "mount /etc/ssl on /state/root/etc/ssl (bind)",
            "mount none on /state/root/etc/ssl (remount,bind,ro,nosuid,nodev)",
            "create /state/root/etc/passwd 644 (123 bytes)",
            "create /state/root/etc/group 644 (46 bytes)",
            "mount /srv/code/abc on /state/root/var/task (bind)",
            "mount none on /state/root/var/task (remount,bind,ro,nosuid,nodev)",
            "mount /srv/layers/abc on /state/root/opt (bind)",
            "mount none on /state/root/opt (remount,bind,ro,nosuid,nodev)",
            "mkdir /state/root/var/lang 755",
            "mount /srv/rt/python on /state/root/var/lang (bind)",
            "mount none on /state/root/var/lang (remount,bind,ro,nosuid,nodev)",
            "mount /state/tmp/7 on /state/root/tmp (bind)",
            "mount tmpfs on /state/root/dev type tmpfs (nosuid,noexec) [size=64k,nr_inodes=64,mode=0755]",
            "create /state/root/dev/null 666 (0 bytes)",
            "mount /dev/null on /state/root/dev/null (bind)",
            "create /state/root/dev/zero 666 (0 bytes)",
            "mount /dev/zero on /state/root/dev/zero (bind)",
            "create /state/root/dev/full 666 (0 bytes)",
            "mount /dev/full on /state/root/dev/full (bind)",
            "create /state/root/dev/random 666 (0 bytes)",
            "mount /dev/random on /state/root/dev/random (bind)",
            "create /state/root/dev/urandom 666 (0 bytes)",
            "mount /dev/urandom on /state/root/dev/urandom (bind)",
            "symlink /state/root/dev/fd -> /proc/self/fd",
            "symlink /state/root/dev/stdin -> /proc/self/fd/0",
            "symlink /state/root/dev/stdout -> /proc/self/fd/1",
            "symlink /state/root/dev/stderr -> /proc/self/fd/2",
            "mount proc on /state/root/proc type proc (nosuid,nodev,noexec)",
            "pivot_root /state/root",
            "mount none on / (remount,bind,ro,nosuid,nodev)",
        ];
        assert_eq!(steps, expected);
    }

    #[test]
    fn runtime_mounts_may_not_shadow_sandbox_directories() {
        for bad in [
            "/tmp/x",
            "/proc",
            "relative",
            "/var/../etc",
            "/",
            "/var/task",
        ] {
            let runtime = vec![(PathBuf::from("/srv/rt"), PathBuf::from(bad))];
            let spec = RootSpec {
                task_dir: Some(Path::new("/t")),
                opt_dir: None,
                runtime_mounts: &runtime,
                tmp: TmpSource::Tmpfs(64),
            };
            let err = MountPlan::build(Path::new("/r"), &facts(), &spec).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail_at: Option<usize>,
    }
    impl Recorder {
        fn record(&mut self, what: String) -> Result<(), i32> {
            self.calls.push(what);
            if Some(self.calls.len() - 1) == self.fail_at {
                Err(libc::ENOENT)
            } else {
                Ok(())
            }
        }
    }
    impl MountOps for Recorder {
        fn mount(
            &mut self,
            _: Option<&CStr>,
            t: &CStr,
            _: Option<&CStr>,
            _: c_ulong,
            _: Option<&CStr>,
        ) -> Result<(), i32> {
            self.record(format!("mount {t:?}"))
        }
        fn mkdir(&mut self, p: &CStr, _: u32) -> Result<(), i32> {
            self.record(format!("mkdir {p:?}"))
        }
        fn create_file(&mut self, p: &CStr, _: &[u8], _: u32) -> Result<(), i32> {
            self.record(format!("create {p:?}"))
        }
        fn symlink(&mut self, _: &CStr, l: &CStr) -> Result<(), i32> {
            self.record(format!("symlink {l:?}"))
        }
        fn pivot_root(&mut self, p: &CStr) -> Result<(), i32> {
            self.record(format!("pivot {p:?}"))
        }
    }

    #[test]
    fn execution_stops_at_the_first_failure_and_names_the_step() {
        let spec = RootSpec {
            task_dir: Some(Path::new("/t")),
            opt_dir: None,
            runtime_mounts: &[],
            tmp: TmpSource::Tmpfs(64),
        };
        let plan = MountPlan::build(Path::new("/r"), &HostFacts::default(), &spec).unwrap();
        let mut ok = Recorder::default();
        execute(plan.steps.iter().map(MountStep::as_ref), &mut ok).unwrap();
        assert_eq!(ok.calls.len(), plan.steps.len());
        let mut failing = Recorder {
            fail_at: Some(3),
            ..Default::default()
        };
        assert_eq!(
            execute(plan.steps.iter().map(MountStep::as_ref), &mut failing),
            Err((3, libc::ENOENT))
        );
        assert_eq!(failing.calls.len(), 4);
    }
}
