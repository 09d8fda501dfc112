"""``viops diagnose``: checks of a training config's variational inference that need no registered model."""

from __future__ import annotations

from viops.commands.common import EXIT_OK, EXIT_REJECTED, common, emit


def _cmd_diagnose(args) -> int:
    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.diagnostics.sbc import run_sbc

    config = load_config(args.config, parse_overrides(args.set))
    summary = run_sbc(config, fits=args.fits, draws=args.draws, steps=args.steps, lr=args.lr, bins=args.bins,
                      max_rows=args.max_rows, seed=args.seed, out=args.out)
    worst = min(summary["p_values"].items(), key=lambda item: item[1])
    human = (f"SBC of {summary['config']} ({summary['family']}): {'passed' if summary['passed'] else 'FAILED'} - "
             f"{summary['fits']} fits on {summary['rows']} rows, {summary['draws']} draws each, "
             f"{summary['seconds']:.0f} s; lowest p-value {worst[1]:.3g} ({worst[0]}), level "
             f"{summary['alpha']:g}/{len(summary['p_values'])}"
             + (f"; ranks not uniform for {', '.join(summary['failed'])}" if summary["failed"] else "")
             + (f"; rank histograms: {summary['plot']}" if summary.get("plot") else ""))
    emit(summary, args.json, human)
    return EXIT_OK if summary["passed"] else EXIT_REJECTED


def add_commands(sub) -> None:
    """Add the diagnose command to the ``viops`` parser."""
    p = sub.add_parser("diagnose", help="simulation-based calibration (--sbc) of a config's VI on its own design")
    common(p)
    p.add_argument("--sbc", action="store_true", required=True,
                   help="simulation-based calibration: fit the guide to data simulated from the prior, rank the truth")
    p.add_argument("--fits", type=int, default=100, help="simulated datasets, one fit each (default 100)")
    p.add_argument("--draws", type=int, default=99, help="posterior draws per fit; draws + 1 divisible by --bins")
    p.add_argument("--bins", type=int, default=10, help="rank bins of the chi-squared uniformity test (default 10)")
    p.add_argument("--steps", type=int, default=1500, help="full-batch Adam steps per fit (default 1500)")
    p.add_argument("--lr", type=float, default=0.02, help="Adam step size (default 0.02)")
    p.add_argument("--max-rows", type=int, default=200, help="training rows used as the design (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulations and fits (default 0)")
    p.add_argument("--out", help="directory for sbc.json and sbc_ranks.png")
    p.set_defaults(func=_cmd_diagnose)
