"""The sample app in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium)
against a hypercorn process started from hypercorn.toml. Screenshots of every page are saved
under test-artifacts/screenshots/ (git-ignored).

Without Chromium these tests are skipped with the reason; with CI=true they fail instead.
Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.conftest import IN_CI
from tests.servers import ROOT, Server, hypercorn_server, server_env
from tests.test_e2e import COOKIE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
FIREFOX_ON_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
)


def require_chromium() -> None:
    if CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK):
        return
    message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if IN_CI:
        pytest.fail(f"{message}; the browser tests are required when CI=true")
    pytest.skip(message)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One hypercorn (two workers, SQLite in a temporary instance folder) for this module."""
    require_chromium()
    folder = tmp_path_factory.mktemp("browser")
    with hypercorn_server(server_env(folder / "instance"), folder / "server.log") as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def context(browser: Browser, server: Server) -> AsyncIterator[BrowserContext]:
    created = await browser.new_context(
        base_url=server.url, viewport={"width": 1100, "height": 800}
    )
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    """A page that records console errors (a CSP violation would show up there)."""
    opened = await context.new_page()
    errors: list[str] = []
    opened.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    assert errors == [], errors


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def log_in(page: Page, username: str = "alice", password: str = "wonderland") -> None:  # noqa: S107
    await page.goto("/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()


async def session_cookie_value(context: BrowserContext) -> str | None:
    for cookie in await context.cookies():
        if cookie.get("name") == COOKIE:
            return cookie.get("value")
    return None


async def test_log_in_count_visits_fill_cart_log_out(page: Page, context: BrowserContext) -> None:
    await page.goto("/")
    await expect(page.locator("#login-state")).to_have_text("No")
    await screenshot(page, "01-home-logged-out")

    await page.goto("/dashboard")  # logged out: sent to the login page
    await expect(page).to_have_url(re.compile(r"/login\?next=/dashboard$"))
    await expect(page.get_by_text("Please log in to see that page.")).to_be_visible()

    await log_in(page, password="not-the-password")
    await expect(page.locator("#login-error")).to_have_text("Unknown username or wrong password.")
    await screenshot(page, "02-login-error")

    await page.goto("/login")
    await screenshot(page, "03-login")
    before = await session_cookie_value(context)
    await log_in(page)
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    await expect(page.get_by_role("heading", name="Hello, Alice Liddell")).to_be_visible()
    await expect(page.get_by_text("Welcome, Alice Liddell!")).to_be_visible()
    assert await session_cookie_value(context) not in {None, before}  # a new ID at login
    await screenshot(page, "04-dashboard")

    await page.goto("/visits")
    first = int(await page.locator("#visits").inner_text())
    await page.reload()
    await expect(page.locator("#visits")).to_have_text(str(first + 1))
    await page.reload()
    await expect(page.locator("#visits")).to_have_text(str(first + 2))
    await screenshot(page, "05-visits")

    await page.goto("/cart/")
    await expect(page.locator("#cart-empty")).to_be_visible()
    await page.get_by_role("button", name="Add Loose-leaf tea, 100 g to cart").click()
    await page.get_by_role("button", name="Add Stoneware mug to cart").click()
    await page.get_by_role("button", name="Add Stoneware mug to cart").click()
    await expect(page.locator("#cart-total")).to_have_text("€30.50")
    await expect(page.locator("#cart-count")).to_have_text("3")
    await page.get_by_label("Quantity of Loose-leaf tea, 100 g").fill("4")
    await page.locator('tr[data-product="tea"]').get_by_role("button", name="Update").click()
    await expect(page.locator("#cart-total")).to_have_text("€50.00")
    await screenshot(page, "06-cart")
    await page.get_by_role("button", name="Remove Stoneware mug").click()
    await expect(page.locator("#cart-total")).to_have_text("€26.00")
    await expect(page.locator('tr[data-product="mug"]')).to_have_count(0)
    await page.get_by_role("button", name="Clear cart").click()
    await expect(page.locator("#cart-empty")).to_be_visible()

    await page.get_by_role("button", name="Log out alice").click()
    await expect(page).to_have_url(re.compile(r"/\?logged_out=1$"))
    await expect(page.locator("#logged-out-notice")).to_be_visible()
    await expect(page.locator("#login-state")).to_have_text("No")
    assert await session_cookie_value(context) is None
    await screenshot(page, "07-logged-out")

    await page.goto("/dashboard")
    await expect(page).to_have_url(re.compile(r"/login\?next=/dashboard$"))


async def test_page_scripts_cannot_read_the_session_cookie(
    page: Page, context: BrowserContext
) -> None:
    await log_in(page)
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    [cookie] = [cookie for cookie in await context.cookies() if cookie.get("name") == COOKIE]
    assert cookie.get("httpOnly") is True
    assert cookie.get("sameSite") == "Lax"
    assert COOKIE not in await page.evaluate("document.cookie")


async def test_live_visit_over_websocket_is_stored(page: Page) -> None:
    await page.goto("/visits")
    start = int(await page.locator("#visits").inner_text())
    button = page.get_by_role("button", name="Count a visit live")
    await button.click()
    await expect(page.locator("#visits")).to_have_text(str(start + 1))
    await expect(page.locator("#live-status")).to_have_text("Counted live.")
    await expect(button).to_be_enabled()  # the socket stays open for the next one
    await button.click()
    await expect(page.locator("#visits")).to_have_text(str(start + 2))
    await screenshot(page, "08-visits-live")
    await page.reload()  # the websocket's changes were stored: this view counts on top
    await expect(page.locator("#visits")).to_have_text(str(start + 3))


async def test_not_found_page(context: BrowserContext) -> None:
    page = await context.new_page()  # not the fixture: the 404 itself is logged as an error
    response = await page.goto("/no-such-page")
    assert response is not None and response.status == 404
    await expect(page.get_by_role("heading", name="404 · Not Found")).to_be_visible()
    await screenshot(page, "09-not-found")


async def test_secure_cookie_still_works_on_loopback_http(browser: Browser, tmp_path: Path) -> None:
    """QUARTSESS_COOKIE_SECURE=1 over http://127.0.0.1: Chromium treats loopback as a
    secure origin, so it keeps and sends the Secure cookie (non-browser clients such as
    httpx do not; over any other plain-http host browsers drop it too)."""
    env = server_env(tmp_path / "instance", QUARTSESS_COOKIE_SECURE="1")
    with hypercorn_server(env, tmp_path / "server.log") as secure_server:
        context = await browser.new_context(base_url=secure_server.url)
        try:
            page = await context.new_page()
            await page.goto("/visits")
            await page.reload()
            await expect(page.locator("#visits")).to_have_text("2")
            cookies = await context.cookies()
            names = {cookie.get("name") for cookie in cookies}
            assert names == {f"__Host-{COOKIE}", f"__Host-{COOKIE}_csrf"}
            for cookie in cookies:
                assert cookie.get("secure") is True
                assert cookie.get("httpOnly") is True
        finally:
            await context.close()


async def test_login_works_on_a_first_visit_with_no_stored_session(
    page: Page, context: BrowserContext
) -> None:
    await page.goto("/login")  # the very first request of this browser
    names = {cookie.get("name") for cookie in await context.cookies()}
    assert names == {f"{COOKIE}_csrf"}  # only the CSRF nonce: no session was stored
    await screenshot(page, "10-login-first-visit")
    await page.get_by_label("Username").fill("alice")
    await page.get_by_label("Password").fill("wonderland")
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    await expect(page.get_by_role("heading", name="Hello, Alice Liddell")).to_be_visible()
    assert await session_cookie_value(context) is not None


async def test_too_many_failed_logins_show_the_429_page(context: BrowserContext) -> None:
    page = await context.new_page()  # not the fixture: the 429 itself is logged as an error
    for attempt in range(5):
        await log_in(page, "bob", f"guess-{attempt}")
        await expect(page.locator("#login-error")).to_have_text(
            "Unknown username or wrong password."
        )
    await page.goto("/login")
    await page.get_by_label("Username").fill("bob")
    await page.get_by_label("Password").fill("builder")  # the right one, refused too
    async with page.expect_response(re.compile(r"/login$")) as answer:
        await page.get_by_role("button", name="Log in").click()
    response = await answer.value
    assert response.status == 429
    assert 0 < int(await response.header_value("retry-after") or "0") <= 900
    await expect(page.locator("#login-error")).to_have_text(
        re.compile(r"^Too many failed logins\. Try again in \d+ minutes?\.$")
    )
    await screenshot(page, "11-login-throttled")
    await page.goto("/dashboard")
    await expect(page).to_have_url(re.compile(r"/login\?next=/dashboard$"))


async def test_logout_leaves_no_cookie_and_no_stored_data(
    page: Page, context: BrowserContext
) -> None:
    await log_in(page)
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    # What a page script might have kept: logging out must not leave it behind.
    await page.evaluate(
        "localStorage.setItem('draft', 'secret'); sessionStorage.setItem('tab', 'secret')"
    )
    assert len(await context.cookies()) == 2  # the session's and the CSRF nonce's
    await page.get_by_role("button", name="Log out alice").click()
    await expect(page).to_have_url(re.compile(r"/\?logged_out=1$"))
    await expect(page.locator("#logged-out-notice")).to_be_visible()
    assert await context.cookies() == []
    assert await page.evaluate("localStorage.length") == 0
    assert await page.evaluate("sessionStorage.length") == 0
    await screenshot(page, "12-logged-out-clean")


async def open_watched_page(context: BrowserContext) -> tuple[Page, list[str]]:
    """A page of ``context`` and the console errors it logs (as the ``page`` fixture)."""
    opened = await context.new_page()
    errors: list[str] = []
    opened.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    opened.on("pageerror", lambda error: errors.append(str(error)))
    return opened, errors


async def test_one_device_logs_the_other_out_from_the_sessions_page(
    browser: Browser, tmp_path: Path
) -> None:
    """Two independent browsers logged in as alice, on a server of their own (so no other
    test's sessions of alice show up): the second lists both and logs the first out."""
    with hypercorn_server(server_env(tmp_path / "instance"), tmp_path / "server.log") as server:
        first_context = await browser.new_context(
            base_url=server.url, viewport={"width": 1100, "height": 800}
        )
        second_context = await browser.new_context(
            base_url=server.url, viewport={"width": 1100, "height": 800}
        )
        try:
            first, first_errors = await open_watched_page(first_context)
            second, second_errors = await open_watched_page(second_context)
            await log_in(first)
            await expect(first).to_have_url(re.compile(r"/dashboard$"))
            await log_in(second)
            await expect(second).to_have_url(re.compile(r"/dashboard$"))

            await second.get_by_role("link", name="Sessions", exact=True).click()
            await expect(second).to_have_url(re.compile(r"/sessions/$"))
            await expect(second.get_by_role("heading", name="Your sessions")).to_be_visible()
            rows = second.locator("#devices-table tbody tr")
            await expect(rows).to_have_count(2)
            this_device = second.locator("tr.this-device")
            await expect(this_device).to_have_count(1)
            await expect(this_device).to_contain_text("this device")
            await expect(this_device.locator(".browser")).to_have_text(
                re.compile(r"^(Headless)?Chrom(e|ium) \d+$")
            )
            await expect(this_device.locator(".system")).to_have_text("Linux")
            await expect(this_device.locator(".ip")).to_have_text("127.0.0.1")
            await screenshot(second, "13-sessions-two-devices")

            other = second.locator("tr.device:not(.this-device)")
            await other.get_by_role("button", name=re.compile(r"^Log out ")).click()
            await expect(second).to_have_url(re.compile(r"/sessions/$"))
            await expect(second.get_by_text("That device is logged out.")).to_be_visible()
            await expect(rows).to_have_count(1)
            await expect(second.locator("#only-this-device")).to_be_visible()
            await screenshot(second, "14-sessions-other-device-logged-out")

            await first.goto("/dashboard")  # the first browser's very next page
            await expect(first).to_have_url(re.compile(r"/login\?next=/dashboard$"))
            await expect(first.get_by_role("button", name="Log in")).to_be_visible()
            await screenshot(first, "15-logged-out-from-another-device")

            await second.goto("/dashboard")  # the second stays logged in
            await expect(second.get_by_role("heading", name="Hello, Alice Liddell")).to_be_visible()
            assert first_errors == [] and second_errors == []
        finally:
            await first_context.close()
            await second_context.close()


async def test_a_live_page_closes_when_its_device_is_logged_out_elsewhere(
    browser: Browser, tmp_path: Path
) -> None:
    """Two browsers logged in as bob on a server of their own: the first sees the second's
    new sign-in on its sessions page, keeps the live visit counter open, and the second
    logs it out; the first's counter closes at once (no page load) and says so."""
    with hypercorn_server(server_env(tmp_path / "instance"), tmp_path / "server.log") as server:
        first_context = await browser.new_context(
            base_url=server.url, viewport={"width": 1100, "height": 800}
        )
        second_context = await browser.new_context(
            base_url=server.url,
            viewport={"width": 1100, "height": 800},
            user_agent=FIREFOX_ON_WINDOWS,
        )
        try:
            first, first_errors = await open_watched_page(first_context)
            second, second_errors = await open_watched_page(second_context)
            await log_in(first, "bob", "builder")
            await expect(first).to_have_url(re.compile(r"/dashboard$"))
            await first.goto("/sessions/")  # what this device has seen: only itself
            await expect(first.locator("#new-sign-in")).to_have_count(0)

            await log_in(second, "bob", "builder")
            await expect(second).to_have_url(re.compile(r"/dashboard$"))
            await first.goto("/sessions/")
            notice = first.locator("#new-sign-in")
            await expect(notice).to_contain_text("New sign-in since you last looked")
            await expect(notice).to_contain_text("Firefox 133 on Windows 10")
            await expect(first.locator(".new-sign-in-badge")).to_have_count(1)
            await screenshot(first, "16-sessions-new-sign-in")
            await first.reload()  # seen now: no longer new
            await expect(first.locator("#new-sign-in")).to_have_count(0)

            await first.goto("/visits")
            await expect(first.locator("body")).to_have_attribute("data-live", "open")
            await first.get_by_role("button", name="Count a visit live").click()
            await expect(first.locator("#live-status")).to_have_text("Counted live.")
            await screenshot(first, "17-visits-live-open")

            await second.goto("/sessions/")
            await second.get_by_role(
                "button", name=re.compile(r"^Log out (Headless)?Chrom")
            ).click()
            await expect(second.get_by_text("That device is logged out.")).to_be_visible()

            # The first browser loads nothing: its open socket is closed by the server.
            await expect(first.locator("body")).to_have_attribute("data-live", "logged-out")
            await expect(first.locator("#live-status")).to_have_text(
                "You were logged out: this device's session ended."
            )
            await expect(first.get_by_role("button", name="Count a visit live")).to_be_disabled()
            await screenshot(first, "18-visits-live-logged-out")
            assert first_errors == [] and second_errors == []
        finally:
            await first_context.close()
            await second_context.close()


RECENT_LOGIN_SECONDS = 2


async def test_sensitive_actions_ask_for_the_password_again_after_a_while(
    browser: Browser, tmp_path: Path
) -> None:
    """Two browsers logged in as alice, on a server where a sensitive action needs a login
    within 2 s (10 minutes by default): once that passed, "Log out all other devices"
    and "Change password" go through "Confirm your password" and come back; the new
    password logs the other browser out."""
    env = server_env(
        tmp_path / "instance", QUARTSESS_RECENT_LOGIN_SECONDS=str(RECENT_LOGIN_SECONDS)
    )
    with hypercorn_server(env, tmp_path / "server.log") as server:
        first_context = await browser.new_context(
            base_url=server.url, viewport={"width": 1100, "height": 800}
        )
        second_context = await browser.new_context(
            base_url=server.url,
            viewport={"width": 1100, "height": 800},
            user_agent=FIREFOX_ON_WINDOWS,
        )
        try:
            first, first_errors = await open_watched_page(first_context)
            second, second_errors = await open_watched_page(second_context)
            await log_in(first)
            await log_in(second)
            await expect(second).to_have_url(re.compile(r"/dashboard$"))
            await asyncio.sleep(RECENT_LOGIN_SECONDS + 1)  # the logins grow old

            await first.goto("/sessions/")
            await first.get_by_role("button", name="Log out all other devices").click()
            await expect(first).to_have_url(re.compile(r"/account/confirm\?next=/sessions/$"))
            await expect(first.locator("#confirm-needed")).to_be_visible()
            await screenshot(first, "19-confirm-password")
            await first.get_by_label("Password").fill("wonderland")
            await first.get_by_role("button", name="Confirm").click()
            await expect(first).to_have_url(re.compile(r"/sessions/$"))
            await first.get_by_role("button", name="Log out all other devices").click()
            await expect(first.get_by_text("Logged out 1 other device.")).to_be_visible()
            await second.goto("/dashboard")
            await expect(second).to_have_url(re.compile(r"/login\?next=/dashboard$"))
            await log_in(second)  # back in, for the password change below
            await expect(second).to_have_url(re.compile(r"/dashboard$"))

            await asyncio.sleep(RECENT_LOGIN_SECONDS + 1)
            await first.goto("/dashboard")
            await first.get_by_role("link", name="Change password").click()
            await expect(first).to_have_url(
                re.compile(r"/account/confirm\?next=/account/password$")
            )
            await first.get_by_label("Password").fill("wonderland")
            await first.get_by_role("button", name="Confirm").click()
            await expect(first).to_have_url(re.compile(r"/account/password$"))
            await first.get_by_label("New password", exact=True).fill("looking-glass")
            await first.get_by_label("New password, again").fill("looking-glass")
            await screenshot(first, "20-change-password")
            await first.get_by_role("button", name="Change password").click()
            await expect(first).to_have_url(re.compile(r"/dashboard$"))
            await expect(
                first.get_by_text("Password changed. Logged out 1 other device.")
            ).to_be_visible()
            await screenshot(first, "21-password-changed")

            await second.goto("/dashboard")  # logged out by the change
            await expect(second).to_have_url(re.compile(r"/login\?next=/dashboard$"))
            await log_in(second)  # the old password no longer works
            await expect(second.locator("#login-error")).to_be_visible()
            await log_in(second, "alice", "looking-glass")
            await expect(second).to_have_url(re.compile(r"/dashboard$"))
            assert first_errors == [] and second_errors == []
        finally:
            await first_context.close()
            await second_context.close()
