"""``rerank-repo``: export Hugging Face cross-encoders into the model repository and manage its versions.

Success: a human line, then (as the last stdout line) a JSON summary, also written to the termination log.
Progress goes to stderr: live bars (stages, download bytes) on a terminal, one line per stage otherwise.
Failure: exit code 1 and one line ``error: ...`` on stderr, also written to the termination log, which is
how the operator learns why an export Job failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from rerank_runtime.exporter.errors import EXIT_PERMANENT, EXIT_TRANSIENT, ExportError
from rerank_runtime.repository import WEIGHT_FORMATS, ModelRepository, ModelVersion, RepositoryError

TERMINATION_LOG = Path("/dev/termination-log")
# Tests and non-Kubernetes runners can redirect the termination message.
TERMINATION_LOG_ENV = "RERANK_TERMINATION_LOG"


class SignalInterruptError(BaseException):
    """SIGTERM/SIGINT arrived; raised so staging folders are cleaned up on the way out.

    A BaseException, like KeyboardInterrupt: the `except Exception` blocks that translate library errors
    (an unsupported tokenizer, say) must not turn an interruption into a misleading error line.
    """


def _termination_log() -> Path | None:
    override = os.environ.get(TERMINATION_LOG_ENV)
    path = Path(override) if override else TERMINATION_LOG
    return path if override or path.exists() else None


def _write_termination_log(text: str) -> None:
    path = _termination_log()
    if path is None:
        return
    with contextlib.suppress(OSError):  # never let reporting hide the real outcome
        path.write_text(text + "\n", encoding="utf-8")


def _fail(message: str, *, transient: bool = False) -> NoReturn:
    line = "error: " + " ".join(message.split())
    code = EXIT_TRANSIENT if transient else EXIT_PERMANENT
    print(line, file=sys.stderr, flush=True)
    _write_termination_log(line)
    if threading.active_count() > 1:
        # A download thread stuck on a dead connection would keep the interpreter from exiting.
        sys.stdout.flush()
        os._exit(code)
    raise SystemExit(code)


def _succeed(human: str, summary: dict[str, Any]) -> None:
    line = json.dumps(summary, sort_keys=True)
    print(human)
    print(line, flush=True)
    _write_termination_log(line)


def _read_token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ExportError(f"cannot read --token-file {token_file}: {exc.strerror}") from exc
        if not token:
            raise ExportError(f"--token-file {token_file} is empty")
        return token
    return os.environ.get("HF_TOKEN") or None


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The ``rerank-repo`` argument parser."""
    parser = _Parser(prog="rerank-repo", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="show progress and library logs")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sub: argparse.ArgumentParser, name_required: bool) -> None:
        sub.add_argument("--repository", required=True, type=Path, help="model repository root directory")
        sub.add_argument("--name", required=name_required, help="served model name (may contain '/')")

    export = commands.add_parser("export", help="export a Hugging Face cross-encoder as a new version")
    export.add_argument(
        "--source", required=True, help="Hugging Face repo id (owner/name) or local model folder"
    )
    common(export, name_required=False)
    export.add_argument("--revision", help="branch, tag or commit of a hub source (default: main)")
    export.add_argument("--weight-format", choices=WEIGHT_FORMATS, default="int8")
    export.add_argument(
        "--max-length", type=_positive_int, help="context length (default: the model's usable)"
    )
    export.add_argument("--promote", action="store_true", help="point 'current' at the exported version")
    export.add_argument("--keep", type=_positive_int, help="afterwards keep only the newest K versions")
    export.add_argument(
        "--protect",
        type=_positive_int,
        action="append",
        default=[],
        metavar="N",
        help="never prune version N (repeatable), e.g. a pinned version not yet promoted",
    )
    export.add_argument("--token-file", type=Path, help="file holding the Hugging Face token (else HF_TOKEN)")
    export.add_argument("--timeout", type=float, default=60.0, help="hub request/download stall timeout (s)")

    promote = commands.add_parser("promote", help="serve exactly this version (writes 'current')")
    common(promote, name_required=True)
    promote.add_argument("--version", required=True, type=_positive_int)

    listing = commands.add_parser("list", help="list versions")
    common(listing, name_required=False)
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    prune = commands.add_parser("prune", help="delete all but the newest K versions (never the current one)")
    common(prune, name_required=False)
    prune.add_argument("--keep", required=True, type=_positive_int)
    prune.add_argument("--protect", type=_positive_int, action="append", default=[], metavar="N")

    verify = commands.add_parser("verify", help="check version files against their manifest checksums")
    common(verify, name_required=False)
    verify.add_argument("--version", type=_positive_int, help="only this version (default: all)")
    return parser


def _names(repo: ModelRepository, name: str | None) -> list[str]:
    if name is not None:
        if not repo.versions(name):
            raise ExportError(f"model {name!r} has no versions in {repo.root}")
        return [name]
    return repo.served_names()


def _version_row(version: ModelVersion, current: int | None) -> dict[str, Any]:
    manifest = version.manifest
    return {
        "name": version.name,
        "version": version.number,
        "current": version.number == current,
        "source": manifest.source,
        "revision": manifest.revision,
        "weight_format": manifest.weight_format,
        "max_length": manifest.max_length,
        "size_bytes": version.size_bytes(),
        "created_at": manifest.created_at,
        "export_hash": manifest.export_hash,
    }


def _cmd_export(args: argparse.Namespace) -> None:
    from rerank_runtime.exporter.export import ExportSpec, run_export
    from rerank_runtime.exporter.progress import ExportProgress
    from rerank_runtime.terminal import is_terminal

    # Default served name: the repo id, or the folder name of a local source.
    name = args.name or (Path(args.source).name if Path(args.source).is_dir() else args.source)
    spec = ExportSpec(
        source=args.source,
        repository=args.repository,
        name=name,
        revision=args.revision,
        weight_format=args.weight_format,
        max_length=args.max_length,
        promote=args.promote,
        keep=args.keep,
        protect=tuple(args.protect),
        token=_read_token(args.token_file),
        timeout=args.timeout,
    )
    result = run_export(spec, ExportProgress(sys.stderr, interactive=is_terminal(sys.stderr)))
    version = result.version
    what = "reused existing" if result.reused else "exported"
    human = (
        f"{what} {version.name} version {version.number} ({version.manifest.weight_format}, "
        f"{version.manifest.max_length} tokens, {_human_size(version.size_bytes())}) "
        f"in {result.seconds:.1f} s"
    )
    if spec.promote:
        human += "; promoted to current"
    if result.pruned:
        human += f"; pruned versions {', '.join(map(str, result.pruned))}"
    _succeed(human, result.summary())


def _cmd_promote(args: argparse.Namespace) -> None:
    repo = ModelRepository(args.repository)
    repo.promote(args.name, args.version)
    _succeed(
        f"{args.name}: current -> version {args.version}",
        {"name": args.name, "version": args.version, "current": args.version},
    )


def _cmd_list(args: argparse.Namespace) -> None:
    repo = ModelRepository(args.repository)
    rows: list[dict[str, Any]] = []
    for name in _names(repo, args.name):
        current = repo.current_pointer(name)
        rows.extend(_version_row(v, current) for v in repo.versions(name))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    header = ("NAME", "VERSION", "CURRENT", "SOURCE", "REVISION", "FORMAT", "MAX_LEN", "SIZE", "CREATED")
    table = [header] + [
        (
            r["name"],
            str(r["version"]),
            "*" if r["current"] else "",
            r["source"],
            (r["revision"] or "-")[:12],
            r["weight_format"],
            str(r["max_length"]),
            _human_size(r["size_bytes"]),
            r["created_at"][:19] + "Z",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _cmd_prune(args: argparse.Namespace) -> None:
    repo = ModelRepository(args.repository)
    summary: dict[str, list[int]] = {}
    for name in _names(repo, args.name):
        summary[name] = repo.prune(name, args.keep, args.protect)
    deleted = sum(len(v) for v in summary.values())
    _succeed(f"pruned {deleted} version(s), kept the newest {args.keep} and any current", {"pruned": summary})


def _cmd_verify(args: argparse.Namespace) -> None:
    repo = ModelRepository(args.repository)
    checked = []
    for name in _names(repo, args.name):
        numbers = [args.version] if args.version else [v.number for v in repo.versions(name)]
        for number in numbers:
            repo.verify(name, number)
            checked.append({"name": name, "version": number})
    _succeed(f"verified {len(checked)} version(s): all checksums match", {"verified": checked})


_COMMANDS = {
    "export": _cmd_export,
    "promote": _cmd_promote,
    "list": _cmd_list,
    "prune": _cmd_prune,
    "verify": _cmd_verify,
}


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise SignalInterruptError(signal.Signals(signum).name)


def _quiet_libraries(verbose: bool) -> None:
    """Keep stderr to our one line: the ML libraries are chatty (progress bars, deprecation warnings)."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    warnings.simplefilter("ignore")
    for noisy in ("nncf", "optimum", "transformers", "huggingface_hub", "torch", "openvino", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``rerank-repo`` console script."""
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        _COMMANDS[args.command](args)
    except SignalInterruptError as exc:
        # Eviction, node drain, Job deletion: nothing is wrong with the export itself.
        _fail(f"{args.command} interrupted by {exc}; nothing was published (staging removed)", transient=True)
    except ExportError as exc:
        _fail(str(exc), transient=exc.transient)
    except RepositoryError as exc:
        _fail(str(exc))
    except MemoryError:
        _fail(f"{args.command} ran out of memory; give the export more memory")
    except Exception as exc:  # the last line of defence: still one line and a termination message
        if args.verbose:
            logging.getLogger(__name__).exception("unexpected failure")
        first = (str(exc).strip().splitlines() or [""])[0]
        _fail(f"{args.command} failed unexpectedly: {type(exc).__name__}: {first}")


if __name__ == "__main__":
    main()
