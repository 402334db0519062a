"""``arcface serve --gallery DIR|URI``: the REST service (:mod:`arcface.serve`) under uvicorn.

The gallery is a folder (SQLite + FAISS in this process) or a URI: ``postgresql://...`` (pgvector) or
``milvus://host:port`` (a Milvus server or cluster), which several replicas of the service may share, or
``milvus-lite:///file.db``. A password in a URI is never printed; keep it out of the command line (other users see
it in the process list): put the URI in the settings file, or leave the password out of a PostgreSQL URI and let
libpq read ``PGPASSWORD`` or ``~/.pgpass``.

API keys come from ``ARCFACE_API_KEY`` (comma-separated for several) or ``api_keys`` in a ``--settings`` file
(JSON or YAML, keys named as :class:`arcface.serve.Settings` fields); without one the service refuses to start
unless ``--allow-no-auth`` is given. Options given on the command line win over the settings file; the limits
(timeouts, connections, rate, sizes) are settings-file keys named as the fields (see docs/SECURITY.md).
"""

from __future__ import annotations

import argparse

from arcface.cli._args import CliError, add_threads_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``serve`` subcommand."""
    p = sub.add_parser(
        "serve",
        help="run the REST service (gallery, search, verify) with uvicorn",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--gallery", default=None, metavar="DIR|URI",
                   help="the gallery: a folder, or a postgresql://, milvus://, milvus-lite:// URI (or gallery in "
                        "--settings)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model", default=None, help="default, sface, or a .safetensors/.onnx model file")
    p.add_argument("--detector", default=None, help="face detector: mtcnn (default), yunet, scrfd")
    p.add_argument("--settings", default=None, metavar="FILE", help="settings file (JSON or YAML)")
    p.add_argument(
        "--workers", type=int, default=None,
        help="model inference threads (default: one per usable CPU, each request on one torch thread)",
    )  # fmt: skip
    add_threads_arg(p)
    p.add_argument(
        "--allow-no-auth", action="store_true", default=None,
        help="serve /v1 without API keys (only on a trusted network)",
    )  # fmt: skip
    p.add_argument("--no-docs", dest="docs", action="store_false", default=None,
                   help="do not serve the API docs (/docs) nor /openapi.json")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the settings, build the app, serve until interrupted."""
    try:  # FastAPI and uvicorn are optional (the [all] extra): only the service needs them
        from arcface.serve import create_app  # needs FastAPI (optional)
        from arcface.serve.server import serve  # needs uvicorn (optional)
        from arcface.serve.settings import Settings  # the service's settings, with it
    except ImportError as e:
        msg = f"the service needs FastAPI and uvicorn ({e.name} is missing): pip install 'arcface[all]'"
        raise CliError(msg) from None
    if not 0 < args.port < 65536:
        raise CliError(f"--port must be in 1..65535, got {args.port}")
    settings = Settings.load(
        args.settings,
        gallery=args.gallery,
        model=args.model,
        detector=args.detector,
        workers=args.workers,
        threads=args.threads,
        allow_no_auth=args.allow_no_auth,
        docs=args.docs,
    )
    settings.check_auth()  # before loading the model: fail fast
    app = create_app(settings)
    serve(app, settings, args.host, args.port)
    return 0
