"""Lamina's Python zygote: one pre-initialised interpreter per Python runtime that forks
the main process of new environments, so a cold start skips the interpreter's start-up
(the "zygote" of SOCK, USENIX ATC 2018).

Lamina starts it as the bootstrap is started, `/var/lang/bin/pythonX.Y -S -u
/var/runtime/bootstrap.pyc`, with `_LAMINA_ZYGOTE=1`, which makes the bootstrap import
this module (from zygote.pyc) and call serve() instead of its own main(): the forked
processes then have the command line and the `__main__` module an exec'd one has. As root, in
the host's PID and network namespaces but a private mount namespace in which the runtime
is mounted where environments see it (`/var/lang`, `/var/runtime`), so that the paths
the interpreter computed at start-up (sys.prefix, sys.path) are the environment's. It
imports the few modules the fork needs, freezes
its heap out of the garbage collector's sight, says `ready` on its socket (descriptor 3,
SOCK_SEQPACKET) and then serves one request at a time. The server side of the protocol
and the contract are documented with `lamina_sandbox::Template` and
`lamina_sandbox::Adoption`:

request: NUL-separated fields `namespaces, uid, gid, nofile, cap_last_cap, cwd, deferred,
  count, cgroup.procs paths..., count, seccomp programs as hex...` with five
  descriptors: the environment init's pidfd, the output pipe's write end, the status
  pipe's write end, the read end of the pipe the init closes when the environment's root
  is built (the zygote forks meanwhile; the child waits for it), and a pipe holding the
  environment's variables (NUL-separated NAME=value), read by the child only: the
  zygote's own memory, which every later environment inherits, never holds one
  function's variables (its secrets).
reply: `ok <pid>` (the main process as the host sees it) once it is set up, or
  `error <reason>`. With `deferred` 1 the environment was prepared before its function
  was known: the child answers once set up but for its variables and working directory,
  then waits for the variables (the server writes them after it has mounted the code).

For each request the zygote points its children's PID namespace at the environment's
(setns through the init's pidfd; its own stays the host's) and forks the environment's
main process, the first process of that namespace, then points it back. The child joins
the environment's cgroups and its other namespaces, takes the steps the sandbox's own
function process takes before execve (stdio, rlimits, capabilities, uid/gid,
no_new_privs, seccomp), replaces its environment and runs the bootstrap's main(): module
state is what a fresh `python -S -u bootstrap.pyc` would have, minus the start-up. The
zygote stays its parent: when it exits, the zygote writes its wait status to the status
pipe and kills the init, as the sandbox's init does for an exec'd process.

Not shared with a fresh interpreter: the hash randomisation secret (every environment
forked from one zygote has the zygote's), the parent process id (0: the zygote is outside
the environment's PID namespace), and memory pages the zygote touched, which are shared
copy-on-write and charged to the zygote, not to the environment.
"""

import gc
import os
import select
import signal
import sys

import _socket
import ctypes
import resource

_RUNTIME_DIR = os.path.dirname(os.path.abspath(sys.argv[0]))
# The bootstrap, which is the zygote's __main__ and imported this module (serve()).
bootstrap = None

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAPABILITY_VERSION_3 = 0x20080522
CLONE_NEWPID = 0x20000000
_OWN_PID_NAMESPACE = -1
# The highest capability the zygote dropped from its bounding set (see _empty_bounding_set).
_BOUNDING_SET_EMPTY_TO = -1
# Set by the interpreter's start-up if it coerced the locale: the server passes no LC_*.
_COERCED_LC_CTYPE = os.environ.get("LC_CTYPE")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# capset's arguments for "no capabilities at all", made once rather than in every child.
_NO_CAPABILITIES = (_CapHeader(CAPABILITY_VERSION_3, 0), (_CapData * 2)())


def _check(result, what):
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "%s: %s" % (what, os.strerror(errno)))


def _parse(data):
    fields = data.decode("utf-8", "surrogateescape").split("\0")
    position = 0

    def take():
        nonlocal position
        value = fields[position]
        position += 1
        return value

    def take_list():
        return [take() for _ in range(int(take()))]

    request = {
        "namespaces": int(take()),
        "uid": int(take()),
        "gid": int(take()),
        "nofile": int(take()),
        "cap_last_cap": int(take()),
        "cwd": take(),
        "deferred": take() == "1",
        "cgroup_procs": take_list(),
        "seccomp": [bytes.fromhex(program) for program in take_list()],
    }
    return request


def _read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _become_function(request, init_pidfd, output, ready_w, cgroup_files, root_ready, env_r):
    """The environment's main process. Mirrors the sandbox's function_main."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for fd in cgroup_files:
        os.write(fd, b"0")
    # The init closes the pipe once the root is built, or writes why it could not.
    poller = select.poll()
    poller.register(root_ready, select.POLLIN)
    events = poller.poll()
    if not events or events[0][1] & select.POLLIN:
        raise OSError("the environment's root could not be built")
    # The PID namespace is already the environment's (the fork made it so).
    _check(
        _libc.setns(init_pidfd, request["namespaces"] & ~CLONE_NEWPID),
        "setns into the environment",
    )
    deferred = request["deferred"]
    variables = None if deferred else _read_all(env_r)
    os.setsid()
    adjust = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
    os.write(adjust, b"0")
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    keep = ready_w  # opened after 0-2, so above them
    kept = sorted((keep, env_r) if deferred else (keep,))
    start = 3
    for fd in kept:
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, 1 << 20)
    if not deferred:
        os.chdir(request["cwd"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (request["nofile"], request["nofile"]))
    prctl = _libc.prctl
    _check(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
    # The zygote emptied its own bounding set up to _BOUNDING_SET_EMPTY_TO at start-up,
    # which the child inherits; setns cannot refill it because no user namespace is
    # joined (were one ever joined, the drop would have to happen here, after setns).
    for cap in range(_BOUNDING_SET_EMPTY_TO + 1, request["cap_last_cap"] + 1):
        _check(prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "dropping capability %d" % cap)
    os.setgroups([])
    os.setresgid(request["gid"], request["gid"], request["gid"])
    os.setresuid(request["uid"], request["uid"], request["uid"])
    _check(_libc.capset(ctypes.byref(_NO_CAPABILITIES[0]), _NO_CAPABILITIES[1]), "capset")
    # setresuid from root made the process undumpable (execve would have reset it): its
    # own /proc files would be root's and other processes of its user could not trace it.
    _check(prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "PR_SET_DUMPABLE")
    _check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    for program in request["seccomp"]:
        buffer = ctypes.create_string_buffer(program, len(program))
        fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
        _check(
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0),
            "installing the seccomp filter",
        )
    if deferred:
        return
    _take_variables(variables)
    os.close(keep)


def _take_variables(variables):
    """Replaces the process's environment with the function's."""
    environ = os.environ
    # Key by key: os.environ.clear() pops items one scan at a time (quadratic).
    for name in list(environ):
        del environ[name]
    for entry in variables.decode("utf-8", "surrogateescape").split("\0"):
        if entry:
            name, _, value = entry.partition("=")
            environ[name] = value
    # The interpreter's start-up coerced the C locale (PEP 538) for the zygote as it does
    # for each exec'd one, which shows in the environment as LC_CTYPE.
    if _COERCED_LC_CTYPE is not None and "LC_CTYPE" not in environ:
        environ["LC_CTYPE"] = _COERCED_LC_CTYPE
    import time

    time.tzset()


def _warm_up_prepared():
    """A prepared environment's child, while it waits: runs what its cold start will run
    on copies of the zygote's pages (the import path, a change of the whole environment,
    tzset with Lambda's TZ), so that the copy-on-write faults (~4 us each here, hundreds
    per child) are taken now rather than in the function's Init Duration: importing the
    handler then took ~0.7 ms instead of ~1.3, replacing the environment ~0.2 instead of
    ~0.7. Nothing of any function is involved; the environment is replaced again when the
    function's variables arrive."""
    try:
        _warm_up_imports()
        own = [b"%s=%s" % item for item in os.environb.items()]
        _take_variables(b"\0".join(own + [b"TZ=:UTC"]))
    except BaseException:
        pass  # only slower: the child must not unwind into the zygote's loop


def _await_function(request, env_r):
    """A prepared environment's child, set up and answered for: waits until the server has
    attached a function's code and sends its variables, then becomes that function's."""
    try:
        variables = _read_all(env_r)
        os.close(env_r)
        if not variables:
            # The environment was discarded unused.
            os._exit(0)
        os.chdir(request["cwd"])
        _take_variables(variables)
    except BaseException as e:
        try:
            os.write(2, ("lamina: a prepared environment failed to start: %s\n" % (e,)).encode("utf-8", "replace"))
        finally:
            os._exit(127)


def _run_function(request, init_pidfd, output, ready_w, cgroup_files, root_ready, env_r):
    """The forked child: becomes the function's process, or says why not and exits."""
    try:
        _become_function(request, init_pidfd, output, ready_w, cgroup_files, root_ready, env_r)
    except BaseException as e:
        try:
            os.write(ready_w, ("%s" % (e,)).encode("utf-8", "replace") or b"failed")
        finally:
            os._exit(127)
    if request["deferred"]:
        os.close(ready_w)
        _warm_up_prepared()
        _await_function(request, env_r)
    try:
        bootstrap.main()
    except SystemExit as e:
        code = e.code
        if code is None:
            os._exit(0)
        if isinstance(code, int):
            os._exit(code & 0xFF)
        sys.stderr.write("%s\n" % (code,))
        os._exit(1)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)


# pid -> (status pipe write end, init pidfd) of every running function process.
_children = {}


def _reap(signum=None, frame=None):
    """SIGCHLD: reports each exited function's wait status and ends its environment."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        relay = _children.pop(pid, None)
        if relay is None:
            continue
        status, init_pidfd = relay
        try:
            os.write(status, wait_status.to_bytes(4, sys.byteorder, signed=True))
        except OSError:
            pass  # the server is gone
        # The init ends the namespace (and anything the function left running) when it
        # dies, as it does when its own main process exits.
        try:
            signal.pidfd_send_signal(init_pidfd, signal.SIGKILL)
        except OSError:
            pass
        os.close(status)
        os.close(init_pidfd)


def _restore_pid_namespace():
    if _libc.setns(_OWN_PID_NAMESPACE, CLONE_NEWPID) < 0:
        # Every later child would be born in that environment: stop; the server sees
        # the zygote gone and starts environments the usual way.
        os._exit(70)


def _fork_into(sock, request, init_pidfd, status, output, ready_w, cgroup_files, root_ready, env_r):
    """Forks the environment's main process; returns its pid, registered with _reap."""
    # SIGCHLD waits until the child is registered, so that _reap knows it.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    try:
        _check(_libc.setns(init_pidfd, CLONE_NEWPID), "setns into the PID namespace")
        try:
            child = os.fork()
        except BaseException:
            _restore_pid_namespace()
            raise
        if child == 0:
            sock.detach()  # descriptor 3 is closed with the others
            _run_function(request, init_pidfd, output, ready_w, cgroup_files, root_ready, env_r)
        _restore_pid_namespace()
        _children[child] = (status, init_pidfd)
        return child
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        # Whatever exited while SIGCHLD was held back is reaped now, registered or not.
        _reap()


def _serve_one(sock, data, fds):
    init_pidfd, output, status, root_ready, env_r = fds
    cgroup_files = []
    ready_r = ready_w = None
    try:
        request = _parse(data)
        for path in request["cgroup_procs"]:
            cgroup_files.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
        ready_r, ready_w = os.pipe()
        child = _fork_into(
            sock, request, init_pidfd, status, output, ready_w, cgroup_files, root_ready, env_r
        )
    except BaseException:
        for fd in (init_pidfd, status, ready_r):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in cgroup_files + [output, ready_w, root_ready, env_r]:
            if fd is not None:
                os.close(fd)
    # The child closes its end once it is set up, or writes why it failed and exits.
    failure = _read_all(ready_r)
    os.close(ready_r)
    if failure:
        return b"error " + failure
    return b"ok %d" % child


def _empty_bounding_set():
    """Drops every capability from the zygote's bounding set, once, instead of in each
    forked child (~40 prctl calls, ~0.8 ms of a cold start here). The bounding set only
    limits what an execve may grant, and the zygote never executes anything: its own
    effective and permitted capabilities, which it needs to set environments up, stay."""
    global _BOUNDING_SET_EMPTY_TO
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            last = int(f.read())
    except (OSError, ValueError):
        return
    for cap in range(last + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            return  # each child drops the rest
        _BOUNDING_SET_EMPTY_TO = cap


def _warm_up_imports():
    """Imports, and forgets again, a module of source from a read-only directory, as
    the function's handler will be imported from /var/task. The import system's code
    then runs in every forked child already specialised (Python rewrites bytecode the
    first time it runs), and the modules that path needs are loaded: importing the
    handler cost a forked child ~4 ms without this, ~2 ms with it. Afterwards sys.path,
    sys.modules and the finder caches are as before."""
    # Not an identifier: /var/runtime is on functions' sys.path, and a directory named
    # like a module would be importable there as a namespace package.
    directory = os.path.join(_RUNTIME_DIR, "zygote-warm-up")
    name = "_lamina_warmup"
    if not os.path.isdir(directory):
        return
    sys.path.insert(0, directory)
    try:
        __import__(name)
    except Exception:
        pass
    finally:
        sys.modules.pop(name, None)
        try:
            sys.path.remove(directory)
        except ValueError:
            pass
        sys.path_importer_cache.pop(directory, None)


def serve(main_module):
    """Runs the zygote: called by the bootstrap, started with _LAMINA_ZYGOTE=1."""
    global _OWN_PID_NAMESPACE, bootstrap
    bootstrap = main_module
    _OWN_PID_NAMESPACE = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    # The parent of running functions should not be what the OOM killer picks: its death
    # would end them all. Each function sets its own back to 0. Best effort: lowering it
    # needs CAP_SYS_RESOURCE, which a containerised root may lack.
    try:
        adjust = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        try:
            os.write(adjust, b"-1000")
        finally:
            os.close(adjust)
    except OSError:
        pass
    # Two descriptors per running function (its status pipe and its init's pidfd).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGCHLD, _reap)
    _empty_bounding_set()
    _warm_up_imports()
    # The bootstrap's main() imports it (for exit() and quit()): as good as done.
    import _sitebuiltins  # noqa: F401
    # Everything the zygote has made so far is kept out of the collector's sight: a
    # collection in a forked process would otherwise walk, and so copy, every page of the
    # zygote's heap (as Instagram found; the reason gc.freeze exists).
    gc.collect()
    gc.freeze()
    sock = _socket.socket(fileno=3)
    fd_space = _socket.CMSG_SPACE(5 * 4)
    sock.send(b"ready")
    while True:
        data, ancillary, flags, _ = sock.recvmsg(256 * 1024, fd_space)
        if not data:
            # The server let go of this zygote: its environments keep running, and it
            # stays their parent (reporting their statuses) until the last one ends.
            import time

            while _children:
                time.sleep(1.0)  # woken early by SIGCHLD, whose handler reaps
            return
        fds = []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(
                    int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4)
                )
        if len(fds) != 5 or flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            sock.send(b"error expected one whole request with 5 descriptors, got %d" % len(fds))
            continue
        try:
            reply = _serve_one(sock, data, fds)
        except Exception as e:
            reply = ("error %s" % (e,)).encode("utf-8", "replace")
        sock.send(reply)

