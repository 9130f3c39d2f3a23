"""The web page and its JSON API (``attnseg serve``); needs the ``serve`` extra: ``pip install -e '.[serve]'``."""

from __future__ import annotations

import ipaddress

from .app import ServeSettings, create_app, unique_names

__all__ = ["ServeSettings", "create_app", "load_predictors", "serve", "unique_names"]

MISSING = ("attnseg serve needs FastAPI, uvicorn and python-multipart, which are optional: "
           "pip install -e '.[serve]'")


def require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart)
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValueError(MISSING) from None


def load_predictors(sources: list[str], **load_kwargs) -> dict:
    """name -> Predictor for each run directory, checkpoint or .onnx file."""
    from ..api import load
    return {name: load(src, **load_kwargs) for name, src in zip(unique_names(sources), sources)}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(sources: list[str], host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          **load_kwargs) -> None:
    """Load the models and serve the page until interrupted."""
    require_serve_extra()
    import uvicorn
    predictors = load_predictors(sources, **load_kwargs)
    app = create_app(predictors, settings)
    for name, p in predictors.items():
        print(f"  {name}: {p!r}", flush=True)
    if not is_loopback(host):
        print(f"warning: serving on {host}, which other machines can reach; the page has no authentication",
              flush=True)
    print(f"attnseg serve: http://{host if ':' not in host else f'[{host}]'}:{port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
