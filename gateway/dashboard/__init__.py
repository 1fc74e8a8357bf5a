"""A small web dashboard served by the gateway itself, under /dashboard/.

Key holders sign in with their gateway key and see their tier, models, limits (what is
left now), usage per day per model and recent requests; the operator signs in with
the admin key (`metrics.admin_key`) and sees totals per tier, key and model, errors,
latency percentiles, the configuration in force and the live state of deployments.
Server-rendered HTML and SVG, no script, nothing fetched from the network.

Modules: `sessions` (signed cookies, CSRF, sign-in throttle), `queries` (the usage log,
both backends), `svg` (charts), `html` (layout, tables), `holder` and `operator` (the
two pages), `live` (configuration and balancer state), `routes` (handlers, headers).
"""

from __future__ import annotations

from aiohttp import web

from gateway.dashboard import routes
from gateway.dashboard.sessions import Sessions, SignInThrottle


def dashboard_app(admin_key_sha256: str | None) -> web.Application:
    """The sub-application to mount at /dashboard (`app.add_subapp("/dashboard", ...)`)."""
    app = web.Application(middlewares=[routes.security_headers])
    app[routes.SESSIONS] = Sessions(admin_key_sha256)
    app[routes.THROTTLE] = SignInThrottle()
    app.router.add_get("/", routes.index)
    app.router.add_get("/signin", routes.signin_form)
    app.router.add_post("/signin", routes.signin)
    app.router.add_post("/signout", routes.signout)
    app.router.add_get("/me", routes.key_page)
    app.router.add_get("/ops", routes.ops_page)
    app.router.add_get("/style.css", routes.style)
    return app
