"""OpenAI-compatible serving: `gator serve DIR` (cli.py) runs `create_app` (app.py) under uvicorn.

The names below are imported on first use (gator/lazy.py), so `gator serve --help` does not load torch."""

from gator.lazy import lazy_exports

__all__ = ["ServeConfig", "ServedModel", "create_app", "load_served_models", "serve_models"]
lazy_exports(__name__, {"ServeConfig": "gator.serve.app", "create_app": "gator.serve.app",
                        **dict.fromkeys(["ServedModel", "load_served_models", "serve_models"], "gator.serve.models")})
