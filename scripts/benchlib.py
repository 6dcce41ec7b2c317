"""What every bench and trial script shares: nodes on free ports, waiting for health,
HTTP calls, wrk with parsed results, memory readings and alternating A/B rounds.

    import benchlib as b
    with b.Node(["leader", "--data-dir", d]) as leader:   # a free port, stopped on exit
        b.post(leader.url + "/post", "text=hello")
        r = b.wrk(leader.url + "/post", "5s", script="post.lua")
        print(r.rps, r.p50_ms, r.p99_ms, b.rss_mib(leader.pid))

Only the standard library. Scripts import it from their own directory (`scripts/`).
Every node a script starts is stopped by its PID (SIGTERM, then SIGKILL), never by
name.
"""
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRK_SCRIPTS = os.path.join(ROOT, "scripts", "wrk")


def default_bin():
    """The memdb binary: $MEMDB_BIN, or the release build."""
    return os.environ.get("MEMDB_BIN", os.path.join(ROOT, "target", "release", "memdb"))


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- HTTP -------------------------------------------------------------------------

def call(url, data=None, headers=None, timeout=60, context=None, method=None):
    """The response body of one request (bytes); raises urllib's errors (an HTTPError
    carries the status and the body)."""
    if isinstance(data, str):
        data = data.encode()
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
        return r.read()


def get(url, timeout=60, context=None):
    """GET, the answer as JSON."""
    return json.loads(call(url, timeout=timeout, context=context))


def post(url, body, headers=None, timeout=60, context=None):
    """POST `body` (a str is sent as given: `text=...` is a form), the answer as JSON."""
    return json.loads(call(url, body, headers, timeout, context) or b"null")


def status(url, data=None, headers=None, timeout=40):
    """The status code of one request; None if the node could not be reached."""
    try:
        req = urllib.request.Request(url, data=data, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def health(url, timeout=2, context=None):
    """(status code, body) of `url`/health; (None, {}) if it cannot be reached. A 503
    answers its body too (what is failing)."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout, context=context) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (OSError, ValueError):
        return None, {}


def wait_until(what, check, timeout=30, every=0.02):
    """Polls `check` until it returns something other than None; exits if it does not
    within `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = check()
        if v is not None:
            return v
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def wait_health(url, timeout=30, context=None, ok_only=False):
    """Waits until `url` answers /health (any answer, or with `ok_only` a 200)."""
    def answered():
        code, body = health(url, timeout=1, context=context)
        if code is None or (ok_only and code != 200):
            return None
        return body
    return wait_until(f"{url}/health", answered, timeout, every=0.02)


# --- processes --------------------------------------------------------------------

class Node:
    """A memdb process: `args` after the binary. Unless `args` name a `--port`, it
    listens on a port the kernel picks (`--port 0`), learnt from `--addr-file`. Its
    output goes to `log` (a path, or an open file; discarded if None). Waits for
    /health to answer unless `wait=False`. A context manager: stopped on exit."""

    def __init__(self, args, log=None, binary=None, env=None, wait=True, context=None,
                 scheme="http", start_timeout=60):
        args = list(args)
        addr_file = None
        if "--port" not in args:
            fd, addr_file = tempfile.mkstemp(prefix="memdb-addr-")
            os.close(fd)
            os.remove(addr_file)
            args += ["--port", "0", "--addr-file", addr_file]
        self.args = args
        self._own_log = isinstance(log, str)
        out = open(log, "a") if self._own_log else (log or subprocess.DEVNULL)
        self._log = out
        self.log_name = log if self._own_log else getattr(log, "name", None)
        self.started = time.monotonic()
        self.proc = subprocess.Popen([binary or default_bin(), *args], stdout=out,
                                     stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **(env or {})))
        self.pid = self.proc.pid
        try:
            if addr_file:
                end = time.monotonic() + start_timeout
                while not os.path.exists(addr_file) or not open(addr_file).read().strip():
                    if self.proc.poll() is not None or time.monotonic() > end:
                        raise SystemExit(f"{args[0]} did not start; see {self.log_name}")
                    time.sleep(0.005)
                self.url = f"{scheme}://" + open(addr_file).read().strip()
                os.remove(addr_file)
            else:
                self.url = f"{scheme}://127.0.0.1:{args[args.index('--port') + 1]}"
            self.port = int(self.url.rsplit(":", 1)[1])
            if wait:
                wait_health(self.url, context=context, timeout=start_timeout)
        except BaseException:
            self.stop()
            raise

    def wait(self, pred, what, timeout=600.0, context=None):
        """Polls /health until `pred(code, body)` holds; returns the body. Exits if the
        process ends or `timeout` passes first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            code, body = health(self.url, timeout=5, context=context)
            if pred(code, body):
                return body
            if self.proc.poll() is not None:
                raise SystemExit(f"{what}: the process exited; see {self.log_name}")
            time.sleep(0.01)
        raise SystemExit(f"timed out waiting for {what}")

    def stop(self, timeout=120):
        """SIGTERM, and SIGKILL after `timeout` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_log and not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def kill(self):
        """SIGKILL (a crash), and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def stop_all(nodes):
    for n in reversed(nodes):
        if n is not None:
            n.stop()


def post_following(url, data, headers, timeout):
    """POST `data` to `url`/post once, following one 307 (a raft follower names the
    leader); True if it was acknowledged (202)."""
    for _ in range(2):
        req = urllib.request.Request(url + "/post", data=data, method="POST",
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status == 202
        except urllib.error.HTTPError as e:
            if e.code == 307 and e.headers.get("Location"):
                url = e.headers["Location"].removesuffix("/post")
                continue
            return False
        except OSError:
            return False
    return False


# --- wrk --------------------------------------------------------------------------

class WrkResult:
    def __init__(self, rps, p50_ms, p99_ms, words_per_request, text):
        self.rps = rps
        self.p50_ms = p50_ms
        self.p99_ms = p99_ms
        # What the Lua script reports (`words_per_request=N`), if it does.
        self.words_per_request = words_per_request
        self.text = text


def _ms(s):
    if s is None:
        return float("nan")
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def need(tool, package=None):
    """Exits with what to install if `tool` is not on the PATH."""
    import shutil
    if not shutil.which(tool):
        sys.exit(f"needs {tool}: apt-get install {package or tool}")


def wrk(url, duration="5s", script=None, connections=32, threads=1, headers=(),
        allow_errors=False):
    """One wrk run; exits on any non-2xx answer unless `allow_errors`."""
    need("wrk")
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}", "--latency"]
    if script:
        cmd += ["-s", os.path.join(WRK_SCRIPTS, script)]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True)
    text = out.stdout + out.stderr
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if errors and not allow_errors:
        raise SystemExit(f"{url}: {errors.group(1)} error responses\n{text}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
    wpr = re.search(r"words_per_request=(\d+)", text)
    return WrkResult(rps, _ms(lat.get("50")), _ms(lat.get("99")),
                     int(wpr.group(1)) if wpr else None, text)


# --- memory and rounds ------------------------------------------------------------

def rss_mib(pid, field="VmRSS"):
    """A process's resident memory now (VmRSS) or at its peak (field="VmHWM"), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def median(xs):
    return statistics.median(list(xs))


def ab_rounds(rounds, a, b, run):
    """Runs `run(x)` for x in (a, b), `rounds` times, alternating which goes first, so
    that drift on a shared machine falls on both alike. Returns {a: [...], b: [...]}."""
    res = {a: [], b: []}
    for i in range(rounds):
        for x in ((a, b) if i % 2 == 0 else (b, a)):
            res[x].append(run(x))
    return res
