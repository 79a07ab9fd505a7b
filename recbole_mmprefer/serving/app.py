"""`mmprefer serve` (issue 17): a local web app over a finished run, on FastAPI and uvicorn.

JSON API (every answer JSON, errors as ``{"detail": "..."}``):

=====================================================  ===============================================
``GET /api/status``                                    data set, sizes, the explainer, queue length
``GET /api/users?query=&limit=20``                     users whose id or profile contains ``query``
``GET /api/users/{user}/history``                      the user's interactions, oldest first
``GET /api/users/{user}/recommendations?topk=5``       top-k items, each with its paths and SVG drawing
``GET /api/paths?user=&item=``                         one pair's paths, their text and drawing
``GET /api/explain?user=&item=``                       the explanation, streamed as plain text
``GET /api/explain?user=&item=&stream=false``          the explanation as JSON, once it is done
``GET /api/evaluations``                               the run's evaluation reports and report page
=====================================================  ===============================================

An unknown user or item answers 404 naming the id and how to list valid ones;
a server started before the run's stages answers 503 with the command that
makes what is missing (the page shows it). ``GET /`` is the page: pick or
search a user, see the history and the top-k with each item's paths drawn and
its explanation as it is written. Explanations are made by one worker thread
that owns the one loaded model (:class:`~recbole_mmprefer.serving.explain.ExplanationQueue`),
so requests queue instead of competing for the 2 cores. Binds 127.0.0.1
unless told otherwise.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

from recbole_mmprefer.artifacts import ARTIFACTS, run_dir
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.resources import STYLE_MARKER, page_style
from recbole_mmprefer.retrieval.paths import PathResult
from recbole_mmprefer.serving.explain import ExplanationQueue, PairExplainer
from recbole_mmprefer.serving.session import RecommendSession, UnknownNodeError

logger = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def page_html() -> str:
    """The page, with the stylesheet it shares with report.html."""
    page = resources.files("recbole_mmprefer.serving").joinpath("page.html").read_text(encoding="utf-8")
    return page.replace(STYLE_MARKER, page_style(), 1)


def create_app(config, make_session: Optional[Callable[[], RecommendSession]] = None,
               make_explainer: Optional[Callable[[], PairExplainer]] = None):
    """The FastAPI app of one run. ``make_session`` / ``make_explainer`` default to the run's own (tests give
    small ones); the session loads at start, the explainer on the first explanation."""
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse

    app = FastAPI(title=f"recbole-mmprefer: {config['dataset']}", docs_url="/api/docs", redoc_url=None)
    state = {"session": None, "error": None}
    try:
        state["session"] = (make_session or (lambda: RecommendSession(config)))()
    except (MissingInputError, InputError) as error:  # the server still starts: every answer says what to run
        state["error"] = f"{error} (or run every stage: mmprefer run --dataset {config['dataset']})"
        logger.error("The run is not ready: %s", state["error"])
    explanations = ExplanationQueue(make_explainer or (lambda: PairExplainer(
        config, node_text=state["session"].node_text if state["session"] is not None else None)))

    def session() -> RecommendSession:
        if state["session"] is None:
            raise HTTPException(status_code=503, detail=state["error"])
        return state["session"]

    @app.exception_handler(UnknownNodeError)
    async def unknown(_, error: UnknownNodeError):
        return JSONResponse(status_code=404, content={"detail": str(error)})

    @app.exception_handler(InputError)
    async def bad_input(_, error: InputError):
        return JSONResponse(status_code=400, content={"detail": str(error)})

    @app.get("/", response_class=HTMLResponse)
    def page():
        return page_html()

    @app.get("/api/status")
    def status():
        current = state["session"]
        return {"dataset": config["dataset"], "ready": current is not None, "error": state["error"],
                "users": len(current.known_users()) if current else 0,
                "items": len(current.vectors.item_tokens) if current else 0,
                "explanations": explanations.status()}

    @app.get("/api/users")
    def users(query: str = "", limit: int = Query(20, ge=0, le=1000)):
        return session().users(query, limit)

    @app.get("/api/users/{user}/history")
    def history(user: str):
        return session().history(user)

    @app.get("/api/users/{user}/recommendations")
    def recommendations(user: str, topk: int = Query(5, ge=1, le=100), drawings: bool = True):
        current = session()
        found = current.recommend(user, topk)
        if drawings:
            for item in found["items"]:  # the paths recommend() found, drawn (not searched again)
                result = PathResult.from_record(item["paths"])
                item["svg"], item["path_text"] = current.drawing(result), current.describe_paths(result)
        return found

    @app.get("/api/paths")
    def paths(user: str, item: str):
        current = session()
        result = current.paths(user, item)
        return {**result.to_record(), "svg": current.drawing(result), "path_text": current.describe_paths(result)}

    @app.get("/api/explain")
    def explain(user: str, item: str, stream: bool = True):
        current = session()
        record = current.paths(user, item).to_record()
        answer = explanations.submit(record)
        if not stream:
            try:
                return {"user_id": record["user_id"], "item_id": record["item_id"], "explanation": answer.result()}
            except Exception as error:
                raise HTTPException(status_code=500, detail=f"explaining failed: {error}") from None
        return StreamingResponse(answer, media_type="text/plain; charset=utf-8",
                                 headers={"X-Queue-Position": str(answer.position), "Cache-Control": "no-store"})

    def evaluation_names() -> list:
        folder = ARTIFACTS["evaluation"].dir(config, name="-").parent
        return sorted(p.parent.name for p in folder.glob("*/table.md")) if folder.is_dir() else []

    @app.get("/api/evaluations")
    def evaluations():
        report = ARTIFACTS["report"].dir(config) / "report.html"
        return {"evaluations": [{"name": name, "table": f"/evaluations/{name}/table",
                                 "figure": f"/evaluations/{name}/figure"} for name in evaluation_names()],
                "report": "/report" if report.is_file() else None}

    def evaluation_file(name: str, filename: str) -> Path:
        if name not in evaluation_names():  # only names listed: no path from the request reaches the disk
            raise HTTPException(status_code=404, detail=f"no evaluation {name!r}: GET /api/evaluations lists them")
        path = ARTIFACTS["evaluation"].dir(config, name=name) / filename
        if not path.is_file():
            raise HTTPException(status_code=404, detail=f"evaluation {name!r} has no {filename}")
        return path

    @app.get("/evaluations/{name}/table", response_class=PlainTextResponse)
    def evaluation_table(name: str):
        return evaluation_file(name, "table.md").read_text(encoding="utf-8")

    @app.get("/evaluations/{name}/figure")
    def evaluation_figure(name: str):
        return FileResponse(evaluation_file(name, "distributions.png"), media_type="image/png")

    @app.get("/report", response_class=HTMLResponse)
    def report():
        path = ARTIFACTS["report"].dir(config) / "report.html"
        if not path.is_file():
            raise HTTPException(status_code=404, detail=f"no report yet in {run_dir(config)}: "
                                f"mmprefer run --dataset {config['dataset']} writes it")
        return path.read_text(encoding="utf-8")

    app.state.explanations = explanations
    return app


def serve(config, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Run the app with uvicorn until stopped (Ctrl-C)."""
    import uvicorn

    app = create_app(config)
    logger.info("Serving %s on http://%s:%d/ (API docs: /api/docs)", config["dataset"], host, port)
    uvicorn.run(app, host=host, port=int(port), log_level="info")
