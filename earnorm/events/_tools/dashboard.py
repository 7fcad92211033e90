"""The web dashboard: an ASGI app (Starlette, the ``dashboard`` extra) with a JSON API under
``/api/`` and one page, ``/``, that polls it. No build step: the page is plain HTML and JS.

Security:
- a token (``EARNORM_DASHBOARD_TOKEN``, or ``token=``) is required to serve anywhere but
  loopback; with one set, every request needs it, as ``Authorization: Bearer <token>`` or the
  session cookie the login form sets; compared in constant time;
- actions are POST or DELETE only and, unless authenticated by a bearer header, must carry the
  ``X-CSRF-Token`` header matching the ``earnorm_csrf`` cookie (double submit, SameSite=Strict);
- the page renders every value with ``textContent``: a job whose data holds ``<script>`` shows
  as text.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from earnorm._errors import ConfigError, EventValidationError, JobNotFound
from earnorm.events._broker.keys import split_delayed_member
from earnorm.events._bus import EventBus
from earnorm.events._tools.dashboard_page import LOGIN, PAGE

_SESSION = "earnorm_session"
_CSRF = "earnorm_csrf"
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _starlette() -> Any:
    try:
        import starlette  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the dashboard needs Starlette: pip install 'earnorm[dashboard]'") from None
    from starlette import applications, responses, routing

    return applications, responses, routing


def check_binding(host: str, token: str | None) -> None:
    """``ConfigError`` for a dashboard bound off loopback without a token."""
    if host not in _LOOPBACK and not token:
        raise ConfigError(
            f"the dashboard listens on {host!r}, beyond this machine: set "
            "EARNORM_DASHBOARD_TOKEN (or token=) to require a token")


def dashboard_app(bus: EventBus, *, token: str | None = None) -> Any:
    """The dashboard for ``bus``'s queue as an ASGI app, to run or mount::

        app.mount("/events", dashboard_app(earnorm.event_bus, token=os.environ["TOKEN"]))
    """
    applications, responses, routing = _starlette()
    JSON, HTML = responses.JSONResponse, responses.HTMLResponse
    Redirect = responses.RedirectResponse

    def authenticated(request: Any) -> tuple[bool, bool]:
        """(allowed, by bearer header)."""
        if not token:
            return True, False
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(),
                                                                token.encode()):
            return True, True
        cookie = request.cookies.get(_SESSION, "")
        return hmac.compare_digest(cookie.encode(), token.encode()), False

    def guard(request: Any, *, action: bool = False) -> Any | None:
        allowed, by_bearer = authenticated(request)
        if not allowed:
            return JSON({"error": "a token is required"}, status_code=401)
        if action and not by_bearer:
            sent = request.headers.get("x-csrf-token", "")
            expected = request.cookies.get(_CSRF, "")
            if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
                return JSON({"error": "missing or wrong X-CSRF-Token"}, status_code=403)
        return None

    def filters(request: Any) -> tuple[str | None, str | None]:
        return request.query_params.get("event") or None, request.query_params.get("reason") \
            or None

    async def page(request: Any) -> Any:
        allowed, _ = authenticated(request)
        if not allowed:
            return HTML(LOGIN, status_code=401)
        response = HTML(PAGE)
        if not request.cookies.get(_CSRF):
            response.set_cookie(_CSRF, secrets.token_urlsafe(24), httponly=False,
                                samesite="strict")
        return response

    async def login(request: Any) -> Any:
        form = await request.form()
        given = str(form.get("token", ""))
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            return HTML(LOGIN, status_code=401)
        response = Redirect("./", status_code=303)
        response.set_cookie(_SESSION, token, httponly=True, samesite="strict")
        return response

    async def queues(request: Any) -> Any:
        return guard(request) or JSON([await bus.stats()])

    async def consumers(request: Any) -> Any:
        return guard(request) or JSON((await bus.stats())["consumers"])

    async def next_due(limit: int) -> list[tuple[float, dict[str, Any]]]:
        """The first ``limit`` delayed events, soonest first: (due ms, summary)."""
        members = await bus.broker.next_due(limit)
        return [(score, _summary(split_delayed_member(member)[1])) for member, score in members]

    async def delayed(request: Any) -> Any:
        if (refused := guard(request)) is not None:
            return refused
        limit = min(int(request.query_params.get("limit", 50)), 500)
        due = await next_due(limit)
        revoked = await bus.broker.revoked.which([str(s.get("id")) for _, s in due])
        return JSON([{"due_ms": score, **summary, "revoked": summary.get("id") in revoked}
                     for score, summary in due])

    async def failed(request: Any) -> Any:
        if (refused := guard(request)) is not None:
            return refused
        event, reason = filters(request)
        limit = min(int(request.query_params.get("limit", 100)), 1000)
        return JSON([_brief(j) for j in await bus.get_failed_jobs(limit, None, event, reason)])

    async def failed_job(request: Any) -> Any:
        if (refused := guard(request)) is not None:
            return refused
        return JSON(await bus.get_failed_job(request.path_params["job_id"]))

    async def retry(request: Any) -> Any:
        if (refused := guard(request, action=True)) is not None:
            return refused
        return JSON({"retried": await bus.retry_job(request.path_params["job_id"])})

    async def remove(request: Any) -> Any:
        if (refused := guard(request, action=True)) is not None:
            return refused
        await bus.remove_job(request.path_params["job_id"])
        return JSON({"removed": request.path_params["job_id"]})

    async def retry_all(request: Any) -> Any:
        if (refused := guard(request, action=True)) is not None:
            return refused
        event, reason = filters(request)
        return JSON({"retried": await bus.retry_failed(event, reason)})

    async def purge(request: Any) -> Any:
        if (refused := guard(request, action=True)) is not None:
            return refused
        event, reason = filters(request)
        return JSON({"removed": await bus.purge_failed(event, reason)})

    async def revoke(request: Any) -> Any:
        """Revoke a job: it never runs; ``?terminate=1`` also cancels it if it is running."""
        if (refused := guard(request, action=True)) is not None:
            return refused
        job_id = request.path_params["job_id"]
        terminate = request.query_params.get("terminate", "") in ("1", "true")
        await bus.revoke(job_id, terminate=terminate)
        return JSON({"revoked": job_id, "terminate": terminate})

    async def event_detail(request: Any) -> Any:
        if (refused := guard(request)) is not None:
            return refused
        event_id = request.path_params["event_id"]
        try:
            return JSON({"where": "failed", "job": await bus.get_failed_job(event_id)})
        except JobNotFound:
            pass
        report = await bus.broker.progress.read(event_id)
        if report is not None:  # running, and its handler reported how far it got
            return JSON({"where": "running", "progress": report})
        for score, summary in await next_due(1000):
            if summary.get("id") == event_id:
                return JSON({"where": "delayed", "due_ms": score, "event": summary})
        return JSON({"error": f"event {event_id!r} is neither failed, nor running with a "
                              "progress report, nor among the next 1,000 delayed (handled "
                              "events are not kept)"}, status_code=404)

    def status(code: int) -> Any:
        async def answer(request: Any, exc: Exception) -> Any:
            return JSON({"error": str(exc)}, status_code=code)
        return answer

    Route = routing.Route
    return applications.Starlette(exception_handlers={
        JobNotFound: status(404), EventValidationError: status(409),
    }, routes=[
        Route("/", page),
        Route("/login", login, methods=["POST"]),
        Route("/api/queues", queues),
        Route("/api/consumers", consumers),
        Route("/api/delayed", delayed),
        Route("/api/failed", failed),
        Route("/api/failed/retry-all", retry_all, methods=["POST"]),
        Route("/api/failed/purge", purge, methods=["POST"]),
        Route("/api/failed/{job_id}", failed_job),
        Route("/api/failed/{job_id}", remove, methods=["DELETE"]),
        Route("/api/failed/{job_id}/retry", retry, methods=["POST"]),
        Route("/api/events/{event_id}", event_detail),
        Route("/api/revoke/{job_id}", revoke, methods=["POST"]),
    ])


def _brief(job: Any) -> dict[str, Any]:
    keys = ("job_id", "name", "reason", "detail", "attempts", "last_failed_at", "error_type",
            "error", "data")
    return {k: job.get(k) for k in keys}


def _summary(raw: bytes) -> dict[str, Any]:
    from earnorm._errors import MessageDecodeError
    from earnorm.events._broker.keys import HELD_MARK
    from earnorm.events._wire import decode as protocol

    if raw.startswith(HELD_MARK.encode()):  # a large message, in a key of its own
        return {"name": "(a large message)", "id": None, "retries": None,
                "data": None, "raw_size": None}
    try:
        message = protocol.decode(raw)
    except MessageDecodeError as exc:
        return {"error": str(exc), "size": len(raw)}
    data = message.to_event().data
    return {"id": message.id, "name": message.task, "retries": message.retries,
            "data": _wired(data), "raw_size": len(raw)}


def _wired(data: Any) -> Any:
    from earnorm.events._wire.kombu_types import to_wire

    try:
        return to_wire(data, plain=True)
    except Exception:
        return repr(data)
