"""The `umsrep` command: one clear line and an exit code per error (traceback with --debug)."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pacs_node.config import Config
from pacs_node.journal import STATES
from umsrep_core.cli import add_model_commands
from umsrep_core.errors import UmsrepError

log = logging.getLogger("umsrep")


def _serve(args: argparse.Namespace) -> int:
    from pacs_node.node import Node  # noqa: PLC0415 - each command imports what it needs

    config = _config(args)
    node = Node(config)
    stopped = threading.Event()

    def reload(signum: int, frame: object) -> None:
        from pacs_node.yamlconf import load_config  # noqa: PLC0415

        try:
            node.reload_routing(load_config(args.config).routing)
        except UmsrepError as exc:
            log.error("routing NOT reloaded, the running rules stay: %s", exc)

    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    signal.signal(signal.SIGHUP, reload)
    node.start()  # after the handlers: a signal at any time after listening is handled
    # Python runs signal handlers in the main thread only, and the kernel may hand SIGTERM to
    # any thread (torch's among them): a main thread blocked in an untimed wait would never
    # wake to run the handler. Waking each second lets it.
    while not stopped.wait(1.0):
        pass
    log.info("stopping")
    node.stop()
    return 0


def _config(args: argparse.Namespace) -> Config:
    """The --config file (or the packaged defaults) with --port/--ae-title/--data-dir."""
    from pacs_node.yamlconf import load_config  # noqa: PLC0415

    config = load_config(args.config)
    node = config.node
    update = {k: v for k, v in (("port", args.port), ("data_dir", args.data_dir),
                                ("ae_titles", [args.ae_title] if args.ae_title else None))
              if v is not None}
    return config.model_copy(update={"node": node.model_validate({**node.model_dump(),
                                                                   **update})})


def duration(text: str) -> float:
    """An age as `umsrep studies --since` takes it (`90s`, `30m`, `12h`, `7d`), in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is no age: say 90s, 30m, 12h or 7d")
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def _studies(args: argparse.Namespace) -> int:
    from pacs_node.studies_cmd import list_studies  # noqa: PLC0415

    data_dir = _config(args).node.data_dir
    since = None if args.since is None else time.time() - args.since
    return list_studies(data_dir, as_json=args.json, phi=args.phi, states=args.state,
                        since=since, route=args.route)


def _outbox_retry(args: argparse.Namespace) -> int:
    from pacs_node.journal import Journal, journal_path  # noqa: PLC0415

    data_dir = _config(args).node.data_dir
    journal = Journal(journal_path(data_dir))
    count = journal.retry_failed(args.destination)
    journal.close()
    print(f"{count} failed item(s) queued again; a running node sends them within seconds")
    return 0


def _ask_node(args: argparse.Namespace) -> int:
    """`umsrep complete|discard STUDY_KEY`: asked of the running node, through its REST API
    (pacs_node.rest): only it may complete or drop a study it may be receiving."""
    import json  # noqa: PLC0415
    import ssl  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415
    from urllib.parse import quote  # noqa: PLC0415

    from pacs_node.api import read_token  # noqa: PLC0415

    api = _config(args).api
    if api.port is None or api.token_file is None:
        print(f"umsrep {args.ask}: the running node does this through its API: give the "
              "config an `api` section (port, token_file)", file=sys.stderr)
        return 2
    host = "127.0.0.1" if api.bind in ("0.0.0.0", "::", "") else api.bind
    url = (f"http{'s' if api.tls else ''}://{host}:{api.port}/api/v1/studies/"
           f"{quote(args.study_key, safe='@')}/{args.ask}")
    request = urllib.request.Request(url, data=b"", method="POST")  # noqa: S310 - http(s)
    request.add_header("Authorization", f"Bearer {read_token(api.token_file)}")
    tls = (ssl.create_default_context(cafile=api.tls.ca or api.tls.cert)
           if api.tls is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30, context=tls) as reply:  # noqa: S310
            study = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        print(f"umsrep {args.ask}: {json.loads(exc.read()).get('error')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"umsrep {args.ask}: no node answers at {url}: {exc}", file=sys.stderr)
        return 1
    print(f"study {study['study_key']}: {study['state']}")
    return 0


def _user_add(args: argparse.Namespace) -> int:
    import getpass  # noqa: PLC0415

    from pacs_node.users import add_user  # noqa: PLC0415

    path = args.users_file or _config(args).api.users_file
    if path is None:
        print("umsrep user add: give --users-file, or a config whose api section names "
              "users_file", file=sys.stderr)
        return 2
    password = (getpass.getpass(f"password of {args.name}: ") if sys.stdin.isatty()
                else sys.stdin.readline().rstrip("\n"))
    add_user(path, args.name, args.role, password)
    print(f"user {args.name} ({args.role}) written to {path}")
    return 0


def _reprocess(args: argparse.Namespace) -> int:
    from pacs_node.journal import Journal, journal_path  # noqa: PLC0415

    journal = Journal(journal_path(_config(args).node.data_dir))
    try:
        study = journal.study(args.study_key)
        if study is None:
            print(f"umsrep reprocess: no study {args.study_key}", file=sys.stderr)
            return 1
        if study.purged_at is not None:
            print(f"umsrep reprocess: study {args.study_key}: its instances were removed by "
                  "retention (retention.spool_days); send it again", file=sys.stderr)
            return 1
        if not journal.reprocess(args.study_key):
            print(f"umsrep reprocess: study {args.study_key} is {study.state}, not ended: "
                  "nothing to do yet", file=sys.stderr)
            return 1
    finally:
        journal.close()
    print(f"study {args.study_key}: receiving again; a running node routes it when its quiet "
          "period is over")
    return 0


def _routes_check(args: argparse.Namespace) -> int:
    from pacs_node import routes_cmd  # noqa: PLC0415

    return routes_cmd.check(args.file)


def _routes_test(args: argparse.Namespace) -> int:
    from pacs_node import routes_cmd  # noqa: PLC0415

    return routes_cmd.test(args.file, args.paths, as_json=args.json,
                           calling_ae=args.calling_ae, called_ae=args.called_ae)


def _send(args: argparse.Namespace) -> int:
    from pacs_node import sender  # noqa: PLC0415

    files, skipped = sender.expand(args.paths)
    for path in skipped:
        print(f"skipped (not DICOM): {path}")
    results = sender.send_files(args.host, args.port, files, called_ae=args.aec,
                                calling_ae=args.aet)
    failed = [r for r in results if not r.ok]
    for r in failed:
        status = f"0x{r.status:04X}" if r.status is not None else "-"
        print(f"FAILED {r.path}: status {status} {r.error or ''}".rstrip())
    print(f"sent {len(results) - len(failed)} of {len(results)} files to "
          f"{args.aec}@{args.host}:{args.port}")
    return 1 if failed or not results else 0


def _echo(args: argparse.Namespace) -> int:
    from pacs_node import sender  # noqa: PLC0415

    status = sender.echo(args.host, args.port, called_ae=args.aec, calling_ae=args.aet)
    print(f"C-ECHO {args.aec}@{args.host}:{args.port}: status 0x{status:04X}")
    return 0 if status == 0 else 1


def _samples(args: argparse.Namespace) -> int:
    from pacs_node.samples import main_samples  # noqa: PLC0415

    return main_samples(args.out, args.kind, args.count, args.seed, args.rows, args.columns)


def _demo(args: argparse.Namespace) -> int:
    from workers.demo import run_demo  # noqa: PLC0415 - the whole product: models included

    return run_demo(args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="umsrep", description="DICOM pipeline node for UMS-Rep models. "
        "NOT FOR CLINICAL USE: its models are research models.")
    parser.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    parser.add_argument("--verbose", action="store_true",
                        help="the INFO lines of pynetdicom and highdicom too (off by default)")
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help_: str,
                parent: argparse._SubParsersAction = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        p.set_defaults(run=run)
        return p

    def node_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="YAML config (default: the packaged "
                       "defaults: port 11112, AE UMSREP, ./umsrep-data, loopback callers)")
        p.add_argument("--port", type=int, help="override node.port")
        p.add_argument("--ae-title", help="override node.ae_titles with this one title")
        p.add_argument("--data-dir", type=Path, help="override node.data_dir")

    node_options(command("serve", _serve, "run the node: C-ECHO/C-STORE SCP, routing, "
                                          "dispatch, delivery"))
    p = command("studies", _studies, "list studies with state, counts, route and timings")
    node_options(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--phi", action="store_true", help="also show patient name and ID")
    p.add_argument("--state", action="append", choices=STATES,
                   help="only studies in this state (again for more)")
    p.add_argument("--since", type=duration, metavar="AGE",
                   help="only studies received in the last AGE: 90s, 30m, 12h, 7d")
    p.add_argument("--route", help="only studies a rule of this name routed")

    p = command("reprocess", _reprocess, "route and process again a study that ended (done, "
                "failed, skipped, ignored)")
    node_options(p)
    p.add_argument("study_key", help="as `umsrep studies` lists it: <StudyInstanceUID>@<n>")

    for name, help_ in (("complete", "complete a study the node is receiving now, without "
                                     "waiting for its quiet period (asked of the running node)"),
                        ("discard", "drop a study that is receiving or ended, and its files "
                                    "(asked of the running node)")):
        p = command(name, _ask_node, help_)
        p.set_defaults(ask=name)
        node_options(p)
        p.add_argument("study_key", help="as `umsrep studies` lists it: <StudyInstanceUID>@<n>")

    p = command("retry", _outbox_retry, "queue failed outbox items again (after fixing a "
                "destination)")
    node_options(p)
    p.add_argument("--destination", help="only this destination's items")

    routes = command("routes", lambda a: 2, "check and dry-run routing rules")
    routes_sub = routes.add_subparsers(dest="routes_command", required=True, metavar="ACTION")
    p = command("check", _routes_check, "validate a config file and its rules",
                parent=routes_sub)
    p.add_argument("file", type=Path)
    p = command("test", _routes_test, "dry-run DICOM files or folders through the rules",
                parent=routes_sub)
    p.add_argument("file", type=Path)
    p.add_argument("paths", type=Path, nargs="+")
    p.add_argument("--json", action="store_true")
    p.add_argument("--calling-ae", default="", help="the sender's AE title (default: none)")
    p.add_argument("--called-ae", help="the title it calls (default: the node's first)")

    user = command("user", lambda a: 2, "the web console's users")
    p = command("add", _user_add, "add or replace a console user; the password is read from "
                "stdin (asked for on a terminal)", parent=user.add_subparsers(
                    dest="user_command", required=True, metavar="ACTION"))
    node_options(p)
    p.add_argument("name")
    p.add_argument("--role", choices=("admin", "viewer"), required=True,
                   help="admin acts and sees patient names; viewer looks")
    p.add_argument("--users-file", type=Path, help="default: the config's api.users_file")

    for name, run, help_ in (("send", _send, "send DICOM files or folders (C-STORE SCU)"),
                             ("echo", _echo, "verify a DICOM peer (C-ECHO SCU)")):
        p = command(name, run, help_)
        p.add_argument("host")
        p.add_argument("port", type=int)
        if name == "send":
            p.add_argument("paths", type=Path, nargs="+")
        # The defaults reach a default `umsrep serve`: it answers to UMSREP, and this end is
        # another AE, not the node itself.
        p.add_argument("--aec", default="UMSREP", help="called AE title (default UMSREP)")
        p.add_argument("--aet", default="UMSREP-SCU",
                       help="calling AE title (default UMSREP-SCU)")

    p = command("samples", _samples, "write a sample study as DICOM files (cr, dx: real chests)")
    p.add_argument("out", type=Path)
    p.add_argument("--kind", default="cr", choices=["cr", "dx", "us_doppler", "us_bmode", "ct"])
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--seed", type=int, default=None,
                   help="the same seed writes the same study (default: a new one each time)")
    p.add_argument("--rows", type=int)
    p.add_argument("--columns", type=int)

    add_model_commands(sub)  # `umsrep model ...`: torch is imported only when one runs

    p = command("demo", _demo, "start a node, send it sample studies, show what it did")
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pacs_node import logs  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    logs.setup(as_json=args.log_json, debug=args.debug, verbose=args.verbose)
    try:
        code: int = args.run(args)
    except UmsrepError as exc:
        if args.debug:
            raise
        print(f"umsrep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
