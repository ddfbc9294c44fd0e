"""Two-party logistic-regression training in SecretFlow SPU, for a cross-MPC benchmark.

What it measures: mini-batch SGD for logistic regression run inside SPU (SEMI2K, ring
FM64, fixed point) by two parties in two OS processes linked by SPU's brpc link over
127.0.0.1.  Per step with public row indices I (size B), exactly:
    X_b = [X_gateway[I], X_wallet[I]];  g = sigmoid(X_b @ w + b) - y[I]
    w -= lr / B * (X_b^T g);            b -= lr / B * sum(g)
from w = 0, b = 0, over the batch sequence given in the input npz, as ONE compiled SPU
program (jax fori_loops; state stays secret-shared).  Because the batch indices are
public, each owner lays out its own rows in batch order (X[batches]) in plaintext before
sharing, and step k reads a contiguous slice of the shared arrays: same arithmetic, but
SPU 0.9.5's gather on secret shares (~0.25 s per 1024x30 batch on 2 cores, half of the
step time) is avoided.  Input sharing grows by a factor of `epochs` accordingly.
Reported: compile, input-sharing, training and reveal times, bytes on the wire per party
(kernel TCP_INFO of the link's sockets), peak RSS per party, and the test AUC of the
revealed model (plaintext, after).

Trust model: semi-honest 2PC.  Party 0 (gateway) owns X_gateway and y, party 1 (wallet)
owns X_wallet; each secret-shares its own arrays locally and sends only the peer's
share.  Beaver triples come from SPU's default TrustedFirstParty provider: every party
sends its PRG seed to party 0, which derives all correlated randomness, so party 0 is
trusted as the dealer (it could reconstruct what party 1 opens).  Batch indices, shapes,
lr and epochs are public; only the final w and b are revealed, to party 0.

Usage (SPU's venv; imports only the standard library, numpy, jax and spu):
    python run_lr.py --data IN.npz --out OUT.json [--sigmoid real|seg3|mm1]
        [--port-base 23000] [--field FM64] [--fxp-bits 18] [--timeout-s 3600]
The script starts both parties itself (re-invoking this file with --party 0/1).
"""

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

SIGMOID_MODES = {"real": "SIGMOID_REAL", "seg3": "SIGMOID_SEG3", "mm1": "SIGMOID_MM1"}
DEFAULT_FXP_BITS = {"FM32": 8, "FM64": 18, "FM128": 26}  # SPU's choice for fxp_fraction_bits=0
OWN_INPUTS = {0: ("xg", "y"), 1: ("xw",)}  # SPU variable names each party provides
SECURITY_MODEL = (
    "SEMI2K: 2-out-of-2 additive secret sharing over Z_2^k, semi-honest parties. Beaver "
    "triples from SPU's default TrustedFirstParty provider (BeaverTfpUnsafe): both parties "
    "send their PRG seeds to party 0 (gateway), which generates all triples, so party 0 acts "
    "as trusted dealer and could reconstruct values party 1 opens; the wallet's privacy thus "
    "relies on trusting the gateway (SPU's benchmark default, not a deployment setting). "
    "Public: batch indices/order, shapes, lr, epochs. Revealed: final w, b to party 0 only.")
HOW_SHARED = (
    "Each party process loads only its own npz arrays, reorders its own rows into the public "
    "batch order (X[batches], so each row appears once per epoch), encodes them as SPU fixed "
    "point and "
    "splits them locally into two SEMI2K additive shares with spu.Io.make_shares(VIS_SECRET); "
    "it keeps its share (Runtime.set_var) and sends the serialized peer share (libspu.Share "
    "meta + chunks) over the same brpc link (link.Context.send/recv, 127.0.0.1 TCP), where "
    "the peer set_var's it. Party 0 shares X_gateway and y, party 1 shares X_wallet. The "
    "concatenated batch index array is public, so this reordering is done by each owner in "
    "plaintext before sharing; inside the compiled SPU program batch k is a contiguous slice "
    "of the shared arrays (local on shares, no secret gather). Reveal: party 1 sends its "
    "shares of w and b to party 0, which reconstructs.")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sigmoid", choices=sorted(SIGMOID_MODES), default="real")
    ap.add_argument("--port-base", type=int, default=23000)
    ap.add_argument("--field", choices=sorted(DEFAULT_FXP_BITS), default="FM64")
    ap.add_argument("--fxp-bits", type=int, default=0, help="0 = SPU's default for the field")
    ap.add_argument("--timeout-s", type=float, default=3600.0)
    ap.add_argument("--simulator", action="store_true",
                    help="both parties as threads in this one process over SPU's in-memory link "
                         "(spu.utils.simulation's set-up: SPU's best case, no network)")
    ap.add_argument("--party", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    return ap.parse_args()


# ----------------------------------------------------------------------------- helpers
def pack_share(share):
    """Serialize a libspu.Share (meta, then its chunks) as length-prefixed bytes."""
    parts = [bytes(share.meta)] + [bytes(c) for c in share.share_chunks]
    return b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def unpack_share(data, libspu):
    parts, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from("<Q", data, pos)
        parts.append(data[pos + 8:pos + 8 + size])
        pos += 8 + size
    share = libspu.Share()
    share.meta, share.share_chunks = parts[0], parts[1:]  # Share() is default-constructible
    return share


def tcp_counters(ports):
    """[bytes sent, bytes received] over this process's TCP sockets to/from `ports`.

    Kernel TCP_INFO tcpi_bytes_acked / tcpi_bytes_received: payload above TCP (SPU messages
    plus brpc framing and RPC replies), without retransmissions."""
    sent = recv = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(fd))) as s:
                if s.family != socket.AF_INET or s.type != socket.SOCK_STREAM:
                    continue
                if s.getsockname()[1] not in ports and s.getpeername()[1] not in ports:
                    continue
                info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        except OSError:  # listening socket, closed meanwhile, ...
            continue
        sent += struct.unpack_from("<Q", info, 120)[0]  # tcpi_bytes_acked
        recv += struct.unpack_from("<Q", info, 128)[0]  # tcpi_bytes_received
    return [sent, recv]


def auc(y, score):
    """Rank-based (Mann-Whitney) AUC; tied scores get their average rank."""
    y = np.asarray(y) > 0.5
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


# ----------------------------------------------------------------------------- SPU program
def lower_sigmoid_as_logistic_op():
    """Make jax emit a single stablehlo.logistic op for jax.nn.sigmoid (this process only).

    jax 0.4.34 lowers lax.logistic to 1/(1+exp(-x)) before SPU sees it, so SPU's
    RuntimeConfig.sigmoid_mode would silently never apply.  With this lowering SPU compiles
    pphlo.logistic, evaluated with the configured SIGMOID_REAL / SEG3 / MM1 method."""
    import jax
    from jax.extend.mlir.dialects import stablehlo
    from jax.interpreters import mlir

    mlir.register_lowering(jax.lax.logistic_p, lambda ctx, x: [stablehlo.logistic(x)])


def build_training(sizes, lr, d):
    """The whole training as one jax function (xg, xw, y) -> (w, b), where xg, xw, y hold
    the rows in batch order (row r of the inputs = training row batches[r]).

    The shortest period of the batch-size sequence (normally one epoch) runs in an outer
    fori_loop; inside it each run of equal batch sizes is an inner fori_loop, so every
    distinct batch shape is traced once and nothing is unrolled per step."""
    import jax
    import jax.numpy as jnp

    steps = len(sizes)
    period = next(p for p in range(1, steps + 1)
                  if steps % p == 0 and sizes == sizes[:p] * (steps // p))
    runs, rows = [], 0  # [batch size, count, row offset of the run inside the period]
    for bsz in sizes[:period]:
        if runs and runs[-1][0] == bsz:
            runs[-1][1] += 1
        else:
            runs.append([bsz, 1, rows])
        rows += bsz

    def train(xg, xw, y):
        x = jnp.concatenate([xg, xw], axis=1)  # gateway's columns first

        def step(off, bsz, wb):
            w, b = wb
            # rows arrive pre-gathered in batch order: batch k is a contiguous slice
            xb = jax.lax.dynamic_slice_in_dim(x, off, bsz)
            g = jax.nn.sigmoid(xb @ w + b) - jax.lax.dynamic_slice_in_dim(y, off, bsz)
            return w - lr / bsz * (xb.T @ g), b - lr / bsz * jnp.sum(g)

        def one_period(r, wb):
            for bsz, count, off in runs:
                base = r * rows + off
                if count == 1:
                    wb = step(base, bsz, wb)
                else:
                    wb = jax.lax.fori_loop(
                        0, count, lambda j, c, base=base, bsz=bsz: step(base + j * bsz, bsz, c), wb)
            return wb

        wb = (jnp.zeros(d, jnp.float64), jnp.zeros((), jnp.float64))
        reps = steps // period
        return jax.lax.fori_loop(0, reps, one_period, wb) if reps > 1 else one_period(0, wb)

    return train


def runtime_config(args):
    import spu
    import spu.libspu as libspu

    cfg = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.SEMI2K,
                               field=spu.parse_field_type(args.field),
                               fxp_fraction_bits=args.fxp_bits)
    cfg.sigmoid_mode = spu.parse_sigmoid_mode(SIGMOID_MODES[args.sigmoid])
    cfg.beaver_type = libspu.RuntimeConfig.BeaverType.TrustedFirstParty  # = SPU's default
    return cfg


def compile_training(*, sizes, lr, n, d0, d1):
    """The SPU executable of the whole training (inputs xg, xw, y; outputs w, b)."""
    import jax
    import jax.numpy as jnp
    import spu.libspu as libspu
    from spu.utils import frontend

    lower_sigmoid_as_logistic_op()
    f64 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float64)
    secret = libspu.Visibility.VIS_SECRET
    exe, _ = frontend.compile(
        frontend.Kind.JAX, build_training(sizes, lr, d0 + d1),
        [f64(n, d0), f64(n, d1), f64(n)], {},
        ["xg", "xw", "y"], [secret, secret, secret], lambda outs: ["w", "b"])
    return exe


def load_inputs(path, ranks):
    """The arrays the parties in ``ranks`` own, in batch order; batches and SGD settings."""
    npz = np.load(path)  # lazy: a party reads only the members it owns
    own = {}
    if 0 in ranks:
        own.update(xg=npz["X_gateway"], y=npz["y"])
    if 1 in ranks:
        own["xw"] = npz["X_wallet"]
    batches, sizes = npz["batches"].astype(np.int64), [int(s) for s in npz["batch_sizes"]]
    n_own = len(next(iter(own.values())))
    assert 0 <= batches.min() and batches.max() < n_own, "batch index out of range"
    assert sum(sizes) == len(batches), "batch_sizes do not sum to len(batches)"
    # public indices: lay out own rows in batch order locally, before sharing
    own = {k: np.ascontiguousarray(v[batches], dtype=np.float64) for k, v in own.items()}
    return own, batches, sizes, float(npz["lr"]), int(npz["epochs"]), n_own


def peak_rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024.0


# ----------------------------------------------------------------------------- simulator
def run_simulator(args):
    """Both parties in this process, one thread each, over SPU's in-memory link: the set-up
    of ``spu.utils.simulation.Simulator``, with each phase timed. Returns the result fields."""
    import threading

    import jax
    import spu
    import spu.libspu as libspu

    jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    own, batches, sizes, lr, epochs, n_own = load_inputs(args.data, (0, 1))
    cfg = runtime_config(args)
    io = spu.Io(2, cfg)
    setup_s = time.perf_counter() - t0
    t = time.perf_counter()
    exe = compile_training(sizes=sizes, lr=lr, n=len(batches), d0=own["xg"].shape[1], d1=own["xw"].shape[1])
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    shares = {name: io.make_shares(own[name], libspu.Visibility.VIS_SECRET) for name in ("xg", "xw", "y")}
    desc = libspu.link.Desc()
    for rank in range(2):
        desc.add_party(f"id_{rank}", f"thread_{rank}")
    # a runtime's construction is collective: each party's thread makes its own, as the
    # simulator does; the barriers mark the phase boundaries for the clock
    barrier, errors, outputs = threading.Barrier(3), [], [None, None]

    def party(rank):
        try:
            rt = spu.Runtime(libspu.link.create_mem(desc, rank), cfg)
            for name, share in shares.items():
                rt.set_var(name, share[rank])
            barrier.wait()  # inputs in place
            rt.run(exe)
            barrier.wait()  # trained
            outputs[rank] = [rt.get_var(name) for name in ("w", "b")]
        except threading.BrokenBarrierError:
            pass
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=party, args=(rank,)) for rank in range(2)]
    for th in threads:
        th.start()
    try:
        barrier.wait()
        input_s = time.perf_counter() - t
        t = time.perf_counter()
        barrier.wait()
        train_s = time.perf_counter() - t
    except threading.BrokenBarrierError:
        pass
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    t = time.perf_counter()
    out = {name: np.asarray(io.reconstruct([outputs[0][i], outputs[1][i]]), dtype=np.float64).tolist()
           for i, name in enumerate(("w", "b"))}
    reveal_s = time.perf_counter() - t
    rss = peak_rss_mb()
    out.update(
        version=spu.__version__, n_train=n_own, d=own["xg"].shape[1] + own["xw"].shape[1], epochs=epochs,
        steps=len(sizes), setup_s=setup_s, compile_s=compile_s, input_s=input_s, train_s=train_s,
        reveal_s=reveal_s, total_s=time.perf_counter() - t0, bytes_sent=None, bytes_received=None,
        bytes_sent_by_phase=None, peak_rss_mb=rss, fxp_fraction_bits=args.fxp_bits or DEFAULT_FXP_BITS[args.field])
    return out


# ----------------------------------------------------------------------------- one party
def run_party(args):
    import jax
    import jax.numpy as jnp
    import spu
    import spu.libspu as libspu
    from spu.utils import frontend

    jax.config.update("jax_enable_x64", True)
    rank, peer = args.party, 1 - args.party
    t0 = time.perf_counter()
    own, batches, sizes, lr, epochs, n_own = load_inputs(args.data, (rank,))

    ports = (args.port_base, args.port_base + 1)
    desc = libspu.link.Desc()
    desc.id = f"run_lr_{args.port_base}"
    for r, name in enumerate(("gateway", "wallet")):
        desc.add_party(name, f"127.0.0.1:{ports[r]}")
    desc.recv_timeout_ms = desc.http_timeout_ms = int(args.timeout_s * 1000)
    desc.connect_retry_interval_ms, desc.connect_retry_times = 500, max(1, int(args.timeout_s * 2))
    lctx = libspu.link.create_brpc(desc, rank)

    # Shapes are public: exchange them so both parties compile the same program.
    mine = own["xg" if rank == 0 else "xw"].shape
    (n, d0), (n1, d1) = [json.loads(s) for s in lctx.all_gather(json.dumps(mine))]
    assert n == n1 == len(batches), "inconsistent n_train/indices"

    cfg = runtime_config(args)
    runtime, io = spu.Runtime(lctx, cfg), spu.Io(2, cfg)
    setup_s = time.perf_counter() - t0

    t = time.perf_counter()  # each party compiles locally: the program depends on public data only
    exe = compile_training(sizes=sizes, lr=lr, n=n, d0=d0, d1=d1)
    compile_s = time.perf_counter() - t
    secret = libspu.Visibility.VIS_SECRET
    lctx.barrier()
    net = [tcp_counters(ports)]  # link counters at phase boundaries

    t = time.perf_counter()
    for name, arr in own.items():  # share own data, keep own share, send the peer's
        shares = io.make_shares(arr, secret)
        runtime.set_var(name, shares[rank])
        lctx.send(peer, pack_share(shares[peer]))
    for name in OWN_INPUTS[peer]:
        runtime.set_var(name, unpack_share(lctx.recv(peer), libspu))
    input_s = time.perf_counter() - t
    lctx.barrier()  # start the training clock together
    net.append(tcp_counters(ports))

    t = time.perf_counter()
    runtime.run(exe)
    train_s = time.perf_counter() - t
    net.append(tcp_counters(ports))

    t = time.perf_counter()
    out = {}
    for name in ("w", "b"):
        if rank == 1:
            lctx.send(0, pack_share(runtime.get_var(name)))
        else:
            shares = [runtime.get_var(name), unpack_share(lctx.recv(1), libspu)]
            out[name] = np.asarray(io.reconstruct(shares), dtype=np.float64).tolist()
    reveal_s = time.perf_counter() - t
    total_s = time.perf_counter() - t0
    lctx.barrier()
    net.append(tcp_counters(ports))
    lctx.stop_link()

    rss = peak_rss_mb()
    out.update(
        version=spu.__version__, n_train=n_own, d=d0 + d1, epochs=epochs, steps=len(sizes),
        setup_s=setup_s, compile_s=compile_s, input_s=input_s, train_s=train_s,
        reveal_s=reveal_s, total_s=total_s, bytes_sent=net[-1][0], bytes_received=net[-1][1],
        bytes_sent_by_phase={p: net[i + 1][0] - net[i][0]
                             for i, p in enumerate(("input", "train", "reveal"))},
        peak_rss_mb=rss, fxp_fraction_bits=args.fxp_bits or DEFAULT_FXP_BITS[args.field])
    with open(os.path.join(args.workdir, f"party{rank}.json"), "w") as f:
        json.dump(out, f)


# ----------------------------------------------------------------------------- launcher
def fail(msg):
    print(f"run_lr: error: {msg}", file=sys.stderr)
    sys.exit(1)


def party_error(workdir, rank, rc):
    """One line saying why a party failed: its .err line, else the signal or last log line."""
    err, log = (os.path.join(workdir, f"party{rank}.{ext}") for ext in ("err", "log"))
    if not os.path.exists(err) and rc < 0:
        return f"killed by signal {-rc}"
    with open(err if os.path.exists(err) else log, errors="replace") as f:
        lines = [l.strip() for l in f if l.strip()] or ["no output"]
    return lines[-1][:300]


def run_two_processes(args):
    """Start both parties (this file with --party 0/1); return their result fields."""
    with tempfile.TemporaryDirectory(prefix="spu_lr_") as work:
        procs = []
        try:  # the first failure (or the deadline) ends the other party too
            for rank in (0, 1):
                with open(os.path.join(work, f"party{rank}.log"), "w") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, os.path.abspath(__file__), *sys.argv[1:],
                         "--party", str(rank), "--workdir", work],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            deadline = time.monotonic() + args.timeout_s
            while True:
                rcs = [p.poll() for p in procs]  # poll every party on every pass
                bad = [r for r, rc in enumerate(rcs) if rc not in (None, 0)]
                if bad:
                    fail(" / ".join(f"party {r} exited with rc={rcs[r]}: "
                                    f"{party_error(work, r, rcs[r])}" for r in bad))
                if None not in rcs:
                    break
                if time.monotonic() > deadline:
                    fail(f"timeout after {args.timeout_s:g} s")
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        res = []
        for r in (0, 1):
            with open(os.path.join(work, f"party{r}.json")) as f:
                res.append(json.load(f))

    return res


def main():
    args = parse_args()
    if args.party is not None:
        try:
            run_party(args)
        except BaseException as e:  # one line for the launcher, then a non-zero exit
            msg = " ".join(str(e).split("stacktrace:")[0].split())  # drop SPU's C++ trace
            with open(os.path.join(args.workdir, f"party{args.party}.err"), "w") as f:
                f.write(f"{type(e).__name__}: {msg}"[:300] + "\n")
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)  # don't wait for brpc/SPU threads to wind down
        return

    t0 = time.perf_counter()
    if args.simulator:
        one = run_simulator(args)
        res = [one, one]  # one process: its figures stand for both parties
    else:
        res = run_two_processes(args)
    p0, per = res[0], (lambda key: {str(r): res[r][key] for r in (0, 1)})
    w, b = np.asarray(p0["w"], dtype=np.float64).reshape(-1), float(p0["b"])
    npz = np.load(args.data)  # plaintext evaluation of the revealed model
    out = {
        "system": f"SecretFlow SPU {p0['version']}", "protocol": "SEMI2K", "field": args.field,
        "link": ("SPU's in-memory link, both parties as threads in one process (simulator)" if args.simulator
                 else "SPU's brpc link on 127.0.0.1, one process per party"),
        "fxp_fraction_bits": p0["fxp_fraction_bits"], "sigmoid": args.sigmoid,
        "sigmoid_impl": f"pphlo.logistic, SPU sigmoid_mode={SIGMOID_MODES[args.sigmoid]}",
        "security_model": SECURITY_MODEL,
        **{k: p0[k] for k in ("n_train", "d", "epochs", "steps", "compile_s", "input_s",
                              "train_s", "reveal_s", "total_s", "setup_s")},
        "wall_s": time.perf_counter() - t0,
        "w": w.tolist(), "b": b, "auc_test": auc(npz["y_test"], npz["X_test"] @ w + b),
        "bytes_sent": per("bytes_sent"), "bytes_received": per("bytes_received"),
        "messages": None, "bytes_sent_by_phase": per("bytes_sent_by_phase"),
        "peak_rss_mb": per("peak_rss_mb"),
        "how_inputs_were_shared": ("In one process: spu.Io.make_shares of each array, each runtime given its "
                                   "share (Runtime.set_var), as spu.utils.simulation.Simulator does"
                                   if args.simulator else HOW_SHARED),
        "notes": (
            "Times are party 0's: setup_s = data load + brpc link + runtime init; total_s = "
            "setup through reveal (incl. compile); wall_s = whole script incl. process start. "
            "bytes_* = kernel TCP_INFO bytes_acked/bytes_received of each party's link sockets "
            "(SPU messages + brpc framing/RPC replies, the whole run incl. link setup and "
            "barriers); messages = null: SPU 0.9.5's Python link.Context exposes no stats."),
    }
    tmp = f"{args.out}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
