"""The dashboard: its JSON API and its security (token, CSRF, escaping), and the page in a real
browser (Debian's Chromium driven by Playwright, no browser download): it shows a failed job,
retries it on a click, and the job disappears while the handler runs."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn

from earnorm import ConfigError, Consumer, Event, EventBus, HandlerRegistry
from earnorm.events._tools.dashboard import check_binding, dashboard_app
from earnorm.events._tools.embedded import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
DOCS = Path(__file__).resolve().parents[2] / "docs"
TOKEN = "s3cret-dashboard-token"
XSS = "<script>window.pwned = true</script>"


def needs_chromium() -> None:
    """Skip without Debian's Chromium, except on CI, where its absence is a failure."""
    if not HAVE_CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing: scripts/bootstrap.sh installs it")
        pytest.skip("needs Debian's chromium (scripts/bootstrap.sh installs it)")


async def launch(pw: Any) -> Any:
    """Debian's Chromium through Playwright (never a downloaded browser)."""
    return await pw.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"])


async def serve(app: Any) -> tuple[str, uvicorn.Server, asyncio.Task[None]]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    task = asyncio.get_running_loop().create_task(server.serve())
    await wait_until(lambda: server.started, 10, message="the dashboard serving")
    return f"http://127.0.0.1:{port}", server, task


@pytest.fixture
def bus_config() -> dict[str, Any]:
    return {"retry_policy": {"max_retries": 0}, "unhandled_events": "dead_letter"}


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None
            ) -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def test_off_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="EARNORM_DASHBOARD_TOKEN"):
        check_binding("0.0.0.0", None)
    check_binding("0.0.0.0", TOKEN)
    check_binding("127.0.0.1", None)


async def test_the_api_requires_the_token_and_actions_require_csrf(bus: EventBus) -> None:
    failing = HandlerRegistry()

    async def fail(event: Event) -> None:
        raise ValueError("declined")

    failing.register("dash.fail", fail)
    async with Consumer(bus=bus, registry=failing) as consumer:
        job = await bus.publish(Event(name="dash.fail", data={"n": 1}))
        await wait_until(lambda: consumer.failed == 1, 10)
    base, server, task = await serve(dashboard_app(bus, token=TOKEN))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        def calls() -> list[tuple[int, Any]]:
            return [
                request(f"{base}/api/queues"),
                request(f"{base}/api/queues", headers={"Authorization": "Bearer wrong"}),
                request(f"{base}/api/failed", headers=bearer),
                request(f"{base}/api/failed/{job}/retry", "POST",
                        headers={"Cookie": f"earnorm_session={TOKEN}"}),  # no CSRF header
                request(f"{base}/api/failed/{job}/retry", "GET", headers=bearer),
                request(f"{base}/api/failed/{job}", "DELETE", headers=bearer),
                request(f"{base}/api/failed/{job}", headers=bearer),
            ]

        results = await anyio.to_thread.run_sync(calls)
    finally:
        server.should_exit = True
        await task
    no_token, wrong, listed, no_csrf, get_action, deleted, gone = results
    assert no_token[0] == 401 and wrong[0] == 401
    assert listed[0] == 200 and [j["job_id"] for j in listed[1]] == [job]
    assert no_csrf == (403, {"error": "missing or wrong X-CSRF-Token"})
    assert get_action[0] == 405, "an action is never a GET"
    assert deleted == (200, {"removed": job})
    assert gone[0] == 404


async def test_the_page_in_a_real_browser_retries_a_failed_job_and_escapes_its_data(
    bus: EventBus, queue_name: str
) -> None:
    needs_chromium()
    from playwright.async_api import async_playwright

    healed = anyio.Event()
    ran: list[str] = []
    registry = HandlerRegistry()

    async def flaky(event: Event) -> None:
        if not healed.is_set():
            raise RuntimeError("the payment service is down")
        await anyio.sleep(0.5)  # the job is gone from the page while this runs
        ran.append(event.id)

    registry.register("dash.flaky", flaky)
    base, server, task = await serve(dashboard_app(bus))
    try:
        async with Consumer(bus=bus, registry=registry) as consumer, async_playwright() as pw:
            job = await bus.publish(Event(name="dash.flaky", data={"note": XSS}))
            await wait_until(lambda: consumer.failed == 1, 10, message="the job failed")
            browser = await launch(pw)
            page = await browser.new_page(viewport={"width": 1200, "height": 760})
            await page.goto(base + "/")
            await page.click("nav button[data-tab=failed]")
            row = page.locator("#failed-rows tr", has_text=job)
            await row.wait_for(timeout=10_000)
            assert XSS in await row.inner_text(), "the data shows as text"
            assert await page.evaluate("window.pwned === undefined"), "and never runs"
            if os.environ.get("EARNORM_UPDATE_SCREENSHOTS") == "1":
                await page.screenshot(path=str(DOCS / "dashboard-failed.png"), full_page=True)
            healed.set()
            await page.click(f"button[data-retry='{job}']")
            await row.wait_for(state="detached", timeout=10_000)
            assert ran == [], "gone from the page while the handler still runs"
            await wait_until(lambda: ran == [job], 10, message="the retried job ran")
            await page.click("nav button[data-tab=overview]")
            await page.locator("#cards", has_text="Processed").wait_for(timeout=10_000)
            if os.environ.get("EARNORM_UPDATE_SCREENSHOTS") == "1":
                await page.screenshot(path=str(DOCS / "dashboard-queue.png"), full_page=True)
            await browser.close()
        assert await bus.redis.hlen(f"{queue_name}:failed") == 0
    finally:
        server.should_exit = True
        await task


async def test_bulk_actions_follow_the_filter(bus: EventBus) -> None:
    registry = HandlerRegistry()

    async def fail(event: Event) -> None:
        raise ValueError("declined")

    registry.register("dash.fail", fail)
    async with Consumer(bus=bus, registry=registry) as consumer:
        await bus.publish_batch([Event(name="dash.fail") for _ in range(3)])
        await bus.publish(Event(name="dash.nobody"))
        await wait_until(lambda: consumer.failed == 4, 10)
    base, server, task = await serve(dashboard_app(bus, token=TOKEN))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        def calls() -> list[tuple[int, Any]]:
            return [
                request(f"{base}/api/failed?reason=no_handler", headers=bearer),
                request(f"{base}/api/failed/purge?reason=no_handler", "POST", headers=bearer),
                request(f"{base}/api/failed/retry-all?event=dash.fail&reason=handler_error",
                        "POST", headers=bearer),
                request(f"{base}/api/failed", headers=bearer),
            ]

        listed, purged, retried, left = await anyio.to_thread.run_sync(calls)
    finally:
        server.should_exit = True
        await task
    assert listed[0] == 200 and [j["name"] for j in listed[1]] == ["dash.nobody"]
    assert purged == (200, {"removed": 1})
    assert retried == (200, {"retried": 3})
    assert left == (200, [])


async def test_the_page_revokes_a_delayed_event_which_then_never_runs(
    bus: EventBus, queue_name: str
) -> None:
    """The Delayed tab's Revoke button (after a confirm), the row then marked revoked, the
    Queue tab's Revoked card; a consumer acks the event when it comes due, without running it.
    The API refuses a revoke without the CSRF header."""
    needs_chromium()
    from playwright.async_api import Dialog, async_playwright

    ran: list[str] = []
    registry = HandlerRegistry()

    async def handle(event: Event) -> None:
        ran.append(event.id)

    registry.register("dash.later", handle)
    job = await bus.publish(Event(name="dash.later"), delay=3)
    kept = await bus.publish(Event(name="dash.later"), delay=3)
    base, server, task = await serve(dashboard_app(bus, token=TOKEN))
    try:
        no_csrf = await anyio.to_thread.run_sync(lambda: request(
            f"{base}/api/revoke/{kept}", "POST", headers={"Cookie": f"earnorm_session={TOKEN}"}))
        assert no_csrf == (403, {"error": "missing or wrong X-CSRF-Token"})
        async with async_playwright() as pw:
            browser = await launch(pw)
            page = await browser.new_page()
            confirms: list[str] = []

            async def accept(dialog: Dialog) -> None:
                confirms.append(dialog.message)
                await dialog.accept()

            page.on("dialog", accept)
            await page.goto(base + "/")
            await page.fill("input[name=token]", TOKEN)
            await page.click("button[type=submit]")
            await page.click("nav button[data-tab=delayed]")
            await page.click(f"button[data-revoke='{job}']")
            row = page.locator("#delayed-rows tr", has_text=job)
            await row.locator("text=revoked: will not run").wait_for(timeout=10_000)
            assert await page.locator(f"button[data-revoke='{kept}']").count() == 1
            assert confirms and job in confirms[0]
            await page.click("nav button[data-tab=overview]")
            await page.locator(".card", has_text="Revoked").locator("b", has_text="1").wait_for(
                timeout=10_000)
            await browser.close()
        async with Consumer(bus=bus, registry=registry):
            await wait_until(lambda: ran == [kept], 15, message="the kept one ran when due")

            async def acked() -> bool:
                return (await bus.stats())["counters"].get("revoked") == 1

            await wait_until(acked, 10, message="the revoked one acked, not run")
    finally:
        server.should_exit = True
        await task
    assert ran == [kept]
    assert await bus.get_failed_jobs() == []


async def test_the_event_view_shows_a_running_jobs_progress_live(bus: EventBus) -> None:
    """Looked up once, the Event tab follows the report as the handler moves on."""
    needs_chromium()
    from playwright.async_api import async_playwright

    step = anyio.Event()
    finish = anyio.Event()
    registry = HandlerRegistry()

    async def migrate(event: Event) -> None:
        await event.progress(2, 5, table="users")
        await step.wait()
        await event.progress(4, 5, table="orders")
        await finish.wait()

    registry.register("dash.migrate", migrate)
    base, server, task = await serve(dashboard_app(bus))
    try:
        async with Consumer(bus=bus, registry=registry), async_playwright() as pw:
            job = await bus.publish(Event(name="dash.migrate"))

            async def reported() -> bool:
                return await bus.broker.progress.read(job) is not None
            await wait_until(reported, 10, message="the first report")
            browser = await launch(pw)
            page = await browser.new_page()
            await page.goto(base + "/")
            await page.click("nav button[data-tab=event]")
            await page.fill("#event-id", job)
            await page.click("#event-go")
            shown = page.locator("#event-progress")
            await page.locator("#event-progress", has_text="PROGRESS: 2 of 5").wait_for(
                timeout=10_000)
            step.set()  # no click: the view refreshes itself
            await page.locator("#event-progress", has_text="PROGRESS: 4 of 5").wait_for(
                timeout=10_000)
            assert await page.eval_on_selector("#event-bar", "b => b.value") == 4
            assert "orders" in await page.inner_text("#event-detail")
            finish.set()
            await shown.wait_for(state="hidden", timeout=10_000)
            await browser.close()
    finally:
        server.should_exit = True
        await task


async def test_the_queue_view_shows_what_waits_on_a_rate_or_key_limit(bus: EventBus) -> None:
    needs_chromium()
    from playwright.async_api import async_playwright

    release = anyio.Event()
    registry = HandlerRegistry()

    async def hold(event: Event) -> None:
        await release.wait()

    async def rated(event: Event) -> None:
        pass

    registry.register("dash.keyed", hold, concurrency_key="tenant")
    registry.register("dash.rated", rated, rate_limit="1/s")
    base, server, task = await serve(dashboard_app(bus))
    try:
        async with Consumer(bus=bus, registry=registry), async_playwright() as pw:
            await bus.publish_batch([Event(name="dash.keyed", data={"tenant": "acme"})
                                     for _ in range(3)])
            await bus.publish_batch([Event(name="dash.rated") for _ in range(5)])

            async def waiting() -> bool:
                stats = await bus.stats()
                return stats["key_limited"] == {"1:tenant=acme": 2} and \
                    stats["rate_limited"].get("dash.rated", 0) > 1
            await wait_until(waiting, 10, message="events waiting on both limits")
            browser = await launch(pw)
            page = await browser.new_page()
            await page.goto(base + "/")
            key_row = page.locator("#key-rows tr", has_text="1:tenant=acme")
            await key_row.wait_for(timeout=10_000)
            assert (await key_row.inner_text()).split()[-1] == "2"
            await page.locator("#rate-rows tr", has_text="dash.rated").wait_for(timeout=10_000)
            release.set()
            await page.locator("#key-rows tr", has_text="none").wait_for(timeout=15_000)
            await browser.close()
    finally:
        server.should_exit = True
        await task
