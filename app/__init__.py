"""The quartsess sample app: log in, count visits, fill a cart, see and log out your devices;
sessions stored in SQL.

Serve it with ``hypercorn --config hypercorn.toml 'app:create_app()'``.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from quart import Quart, Response, ResponseReturnValue, current_app, render_template, request
from werkzeug.exceptions import HTTPException

from quartsess import Session, StoreError

from . import account, audit, auth, cart, devices, throttle, views
from .auth import current_user
from .cart import cart_count, money
from .csrf import check_csrf, csrf_token, set_csrf_cookie
from .logs import configure_logging, guard_access_log
from .passwords import PasswordStore
from .secret import derive_key, load_secret_key
from .throttle import Limit, LoginThrottle

THROTTLE_FILE = "login_throttle.sqlite3"
PASSWORDS_FILE = "passwords.sqlite3"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})

# A strict policy works because the pages have no inline script or style.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)


# Only sent when served over HTTPS (QUARTSESS_COOKIE_SECURE=1): one year, subdomains too.
HSTS = "max-age=31536000; includeSubDomains"


def create_app(test_config: dict[str, Any] | None = None) -> Quart:
    """Build the app. Settings come from, in order: defaults, the environment, ``test_config``.

    Environment: ``QUARTSESS_SECRET_KEY`` (else a key generated once into
    ``instance/secret_key``), ``QUARTSESS_DB_URL`` (else SQLite in ``instance/``),
    ``QUARTSESS_TABLE`` (else ``quart_sessions``), ``QUARTSESS_COOKIE_SECURE`` (``1`` when
    served over HTTPS), ``QUARTSESS_INSTANCE_PATH`` (else ``instance/`` next to ``app/``).
    """
    configure_logging()  # first: the start-up warnings below are log lines too
    guard_access_log()
    test_config = dict(test_config or {})
    clock = test_config.pop("CLOCK", time.time)  # quartsess's clock (epoch seconds), for tests
    instance_path = test_config.pop("INSTANCE_PATH", None) or os.environ.get(
        "QUARTSESS_INSTANCE_PATH"
    )
    app = Quart(__name__, instance_path=os.path.abspath(instance_path) if instance_path else None)
    app.config.update(
        SESSION_IDLE_TIMEOUT=timedelta(hours=2),
        # A visitor who never logs in (a visit count, a cart) is forgotten sooner.
        SESSION_ANONYMOUS_IDLE_TIMEOUT=timedelta(minutes=30),
        SESSION_ABSOLUTE_TIMEOUT=timedelta(hours=12),
        # The app keeps the username under "user": quartsess binds the session to it,
        # renews the ID whenever it changes and lists the user's devices by it.
        SESSION_USER_KEY="user",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=2),
        SESSION_COOKIE_SAMESITE="Lax",
    )
    secure = os.environ.get("QUARTSESS_COOKIE_SECURE", "").lower() in TRUE_WORDS
    # Over HTTPS the __Host- prefix makes browsers refuse the cookies unless they are
    # Secure, for this host only (no Domain) and for Path=/: a sibling subdomain or a
    # plain-http page cannot plant or overwrite them.
    prefix = "__Host-" if secure else ""
    app.config.update(
        SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_NAME=f"{prefix}quartsess_demo",
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=None,
        CSRF_COOKIE_NAME=f"{prefix}quartsess_demo_csrf",
    )
    for variable, setting in (
        ("QUARTSESS_DB_URL", "SESSION_DB_URL"),
        ("QUARTSESS_TABLE", "SESSION_TABLE"),
    ):
        if os.environ.get(variable):
            app.config[setting] = os.environ[variable]
    app.config.update(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_secret_key(app.instance_path)

    sessions = Session(app, clock=clock)
    audit.install(app)
    account.install(sessions)
    app.extensions["passwords"] = PasswordStore(
        app.config.get("PASSWORDS_DB") or os.path.join(app.instance_path, PASSWORDS_FILE)
    )
    app.extensions["login_throttle"] = LoginThrottle(
        app.config.get("LOGIN_THROTTLE_DB") or os.path.join(app.instance_path, THROTTLE_FILE),
        key=derive_key(app.config["SECRET_KEY"], throttle.KEY_PURPOSE),
        per_account=app.config.get("LOGIN_LIMIT_PER_ACCOUNT", Limit(failures=5, window=900)),
        per_client=app.config.get("LOGIN_LIMIT_PER_CLIENT", Limit(failures=20, window=900)),
        clock=app.config.get("LOGIN_THROTTLE_CLOCK", time.time),
    )
    app.register_blueprint(views.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(cart.bp)
    app.register_blueprint(devices.bp)
    app.register_blueprint(account.bp)
    app.before_request(check_csrf)
    app.after_request(set_csrf_cookie)
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.jinja_env.globals.update(csrf_token=csrf_token, current_user=current_user)
    app.jinja_env.globals.update(cart_count=cart_count)
    app.jinja_env.filters["money"] = money
    return app


async def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "static":
        # Every page shows the visitor's own state (the navigation has the cart and the
        # user): never keep a copy, neither in a shared cache nor in the browser's history.
        response.cache_control.no_store = True
    if current_app.config["SESSION_COOKIE_SECURE"]:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


async def _http_error(error: HTTPException) -> ResponseReturnValue:
    # With the session store down, any use of the session would fail again.
    use_session = not isinstance(error, StoreError)
    body = await render_template("error.html", error=error, use_session=use_session)
    retry_after = getattr(error, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    return body, error.code or 500, headers
