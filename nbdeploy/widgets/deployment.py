"""The card ``%deploy`` shows: name, version and a status badge, the URL and a curl example
each with a copy button (the display is compact, the copy is the full runnable command),
the input schema, the answer to the example call, and the way to the dashboard."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from nbdeploy.widgets.views import badge, copy_button, esc, style_tag

ANSWER_MAX_CHARS = 160


INTERRUPTED_CALL = "the example call was interrupted; the deploy itself had completed"


def call_example(data: dict[str, Any]) -> tuple[int, str]:
    """The example call of a deploy result (``to_dict()``), made to the version it deployed
    itself (the router's address may send it to another version: a canary's stable one,
    or a newer deploy's); through the deployment's address when that server is not found."""
    from nbdeploy.deployment.traffic import keys, upstream_secrets

    route = data["endpoint"][len(data["url"]) :]
    server = upstream_secrets.server_of(data["name"], int(data["version"]))
    if server is not None:
        return call_endpoint(server.url + route, data["example"], upstream_secrets.headers(server))
    return call_endpoint(data["endpoint"], data["example"], key=keys.read_key(data["name"]))


def call_endpoint(
    url: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    key: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, str]:
    """(HTTP status, body) of one call of a deployed endpoint; (0, why) when it could not
    be made. Ctrl-C ("interrupt kernel") during the call ends only the call: the deploy
    before it had completed, and the answer says so instead of a traceback from urllib."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", errors="replace")
    except OSError as error:
        return 0, str(error)
    except KeyboardInterrupt:
        return 0, INTERRUPTED_CALL


def card_html(
    data: dict[str, Any],
    schema: dict[str, Any],
    answer: tuple[int, str] | None = None,
    key_of: str | None = None,
) -> str:
    """The card for a deploy result's ``to_dict()``; ``answer`` is (HTTP status, body) of
    the example call; ``key_of`` names the deployment whose API key the curl reads with
    ``$(nbdeploy key NAME)`` (the key itself is never shown)."""
    from nbdeploy.deployment.report import compact_curl, curl_example, describe_input
    from nbdeploy.pipeline.progress import shorten

    name, example = data["name"], data.get("example")
    build = "new build" if data.get("built") else "reused an identical build"
    seconds = data.get("seconds")
    took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    head = (
        f'<div class="nbd-head"><span class="nbd-title">{esc(name)}</span>'
        f'<span class="nbd-version">v{esc(data["version"])}</span>'
        f"{badge(data.get('status'))}"
        f'<span class="nbd-muted">{esc(build + took)}</span></div>'
    )
    rows = [
        (
            "URL",
            f'<code class="nbd-url">{esc(data["endpoint"])}</code>' + copy_button(data["endpoint"]),
        ),
        (
            "try",
            f'<pre class="nbd-curl">{esc(compact_curl(data["url"], schema, example, key_of))}'
            "</pre>"
            + copy_button(
                curl_example(data["url"], schema, example, key_of),
                title="copy the full curl command",
            ),
        ),
        ("input", f'<span class="nbd-grow">{esc(describe_input(schema))}</span>'),
    ]
    if answer is not None:
        rows.append(("answer", _answer_html(*answer)))
    requirements = ", ".join(data.get("requirements") or []) or "none"
    rows.append(
        (
            "requirements",
            f'<span class="nbd-muted nbd-grow" title="{esc(requirements)}">'
            f"{esc(shorten(requirements, 200))}</span>",
        )
    )
    rows.append(
        (
            "monitor",
            f'<span class="nbd-grow"><code>nbdeploy.dashboard("{esc(name)}")</code> '
            f'<span class="nbd-muted">· logs: <code>nbdeploy logs {esc(name)}</code></span>'
            "</span>",
        )
    )
    grid = "".join(
        f'<div class="nbd-key">{esc(key)}</div><div class="nbd-val">{value}</div>'
        for key, value in rows
    )
    notices = "".join(
        f'<div class="nbd-muted nbd-small">{esc(notice)}</div>'
        for notice in data.get("notices") or []
    )
    return (
        f'{style_tag()}<div class="nbd nbd-card nbd-deployment">{head}'
        f'<div class="nbd-grid">{grid}</div>{notices}</div>'
    )


def _answer_html(status: int, text: str) -> str:
    from nbdeploy.deployment.report import compact_json
    from nbdeploy.pipeline.progress import shorten

    try:
        shown = compact_json(json.loads(text), max_chars=ANSWER_MAX_CHARS)
    except ValueError:
        shown = shorten(text, ANSWER_MAX_CHARS)
    word = str(status) if status else "no answer"
    colour = "good" if 200 <= status < 300 else "bad"
    return (
        f'<span class="nbd-badge nbd-{colour}">{esc(word)}</span>'
        f'<code class="nbd-answer">{esc(shown)}</code>'
    )


def show_deployment(result: Any) -> Any:
    """Display the card for a deploy result; returns its widget."""
    from IPython.display import display

    from nbdeploy.deployment.report import describe_deploy, needs_key
    from nbdeploy.widgets.card import DeploymentCard

    data = result.to_dict()
    answer = call_example(data) if data.get("example") else None
    key_of = data["name"] if needs_key(data["name"]) else None
    card = DeploymentCard(
        card_html(data, result.version.schema, answer, key_of),
        data["name"],
        text=describe_deploy(result),
    )
    display(card)
    if data.get("strategy") == "canary":
        card.watch_canary(int(data["version"]))
    return card
