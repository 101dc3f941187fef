"""The widget ``%deploy`` shows: name, version, URL, the input schema, a curl example with a
row the service accepts, and the answer to that example call."""

from __future__ import annotations

import html
import json
import urllib.error
import urllib.request
from typing import Any


def call_endpoint(
    url: str, body: dict[str, Any], key: str | None = None, timeout: float = 10.0
) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
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


def show_deployment(result: Any) -> Any:
    import ipywidgets as widgets
    from IPython.display import display

    from nbdeploy.deployment import keys
    from nbdeploy.deployment.report import curl_example, describe_input, needs_key

    data = result.to_dict()
    schema = result.version.schema
    example = data.get("example")
    answer = ""
    if example:
        status, text = call_endpoint(data["endpoint"], example, keys.read_key(data["name"]))
        sent = html.escape(json.dumps(example)[:300])
        answer = (
            f"<tr><th>example</th><td><code>{sent}</code> → {status} "
            f"<code>{html.escape(text[:300])}</code></td></tr>"
        )
    key_of = data["name"] if needs_key(data["name"]) else None
    rows = [
        ("deployment", f"{data['name']} <b>v{data['version']}</b> ({data['status']})"),
        (
            "endpoint",
            f"<code>{html.escape(data['endpoint'])}</code>",
        ),
        ("try", f"<code>{html.escape(curl_example(data['url'], schema, example, key_of))}</code>"),
        ("input", html.escape(describe_input(schema))),
        ("requirements", html.escape(", ".join(data["requirements"]) or "none")),
        ("build", "new build" if data["built"] else "reused an identical build"),
    ]
    body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows)
    view = widgets.HTML(value=f"<table class='nbdeploy-deployment'>{body}{answer}</table>")
    display(view)
    return view
