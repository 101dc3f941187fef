"""The daemon as people see it: ``nbdeploy daemon status|stop|restart|logs|install``.

``install`` writes a systemd user unit (Linux) or a launchd agent (macOS) that starts the
daemon at login or boot, so that deployments come back without a command; where neither
service manager answers, it says so and changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.deployment.runtime import channel, client
from nbdeploy.deployment.runtime.daemon import LOG
from nbdeploy.errors import NbdeployError

SYSTEMCTL_TIMEOUT_SECONDS = 30.0


class ServiceManagerError(NbdeployError):
    """No service manager can start the daemon at boot here."""

    exit_code = 1


def status() -> dict[str, Any]:
    """The running daemon's pid, uptime and what it supervises; ``running: False`` when
    none runs (this starts none)."""
    try:
        answer = client.query("status", timeout=10.0)
    except (client.DaemonError, channel.ChannelError):
        return {"running": False, "socket": str(client.socket_path())}
    return {"running": True, **{k: v for k, v in answer.items() if k != "ok"}}


def stop() -> bool:
    """Stop the daemon (what it started keeps serving); False when none ran."""
    return client.shutdown()


def restart() -> dict[str, Any]:
    """A new daemon, which adopts what runs."""
    client.shutdown()
    client.ensure()
    return status()


def log_lines(lines: int = 50) -> list[str]:
    from nbdeploy.deployment.runtime.processes import tail

    return tail(channel.run_dir(config.home()) / LOG, lines)


def describe(state: dict[str, Any]) -> str:
    """``nbdeploy daemon status`` as text."""
    if not state.get("running"):
        return f"no daemon runs for {config.home()} (the next nbdeploy command starts one)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state["started_at"]))
    lines = [
        f"daemon pid {state['pid']}, up {_duration(state['uptime_s'])} (since {started})",
        f"socket {state['socket']}",
    ]
    children = state.get("children", [])
    if not children:
        lines.append("supervising nothing")
    for child in children:
        where = f"{child['deployment']} " if child.get("deployment") else ""
        version = f"v{child['version']} " if child.get("version") else ""
        port = f" port {child['port']}" if child.get("port") else ""
        restarts = f", {child['restarts']} restarts" if child.get("restarts") else ""
        process = "a thread of the daemon" if child.get("thread") else f"pid {child['pid']}"
        lines.append(f"  {child['kind']:<8} {where}{version}{process}{port}{restarts}".rstrip())
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- start at boot -------------------------------------------------------------------------
def unit_name(home: Path | None = None) -> str:
    """One unit per NBDEPLOY_HOME."""
    digest = hashlib.sha256(str((home or config.home()).resolve()).encode()).hexdigest()[:10]
    return f"nbdeploy-daemon-{digest}"


def systemd_unit(home: Path) -> str:
    """The text of the systemd user unit that runs the daemon of ``home``."""
    python = _quote_systemd(sys.executable)
    return (
        "[Unit]\n"
        f"Description=nbdeploy daemon for {home}\n"
        "After=network.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"Environment={_quote_systemd(f'{config.HOME_ENV}={home}')}\n"
        "Environment=NBDEPLOY_DAEMON_IDLE=0\n"
        f"ExecStart={python} -m nbdeploy.deployment.runtime.daemon\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        # The daemon's children are its deployments: stopping the unit must not stop them.
        "KillMode=process\n\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def _quote_systemd(value: str) -> str:
    """A word of a unit file: quoted, with the characters systemd expands escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    escaped = escaped.replace("$", "$$")
    return f'"{escaped}"'


def install() -> str:
    """Write and enable the unit for this NBDEPLOY_HOME; what was done, in words."""
    home = config.home()
    if sys.platform == "darwin":
        raise ServiceManagerError(
            "nbdeploy daemon install supports systemd user units (Linux) only so far",
            "start the daemon with any nbdeploy command after login",
        )
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise ServiceManagerError(
            "no systemd here (systemctl is not installed): the daemon cannot start at boot",
            "any nbdeploy command (or %load_ext nbdeploy) starts it and brings deployments back",
        )
    answer = _systemctl(systemctl, "is-system-running")
    if answer.returncode not in (0, 1) or "offline" in answer.stdout:
        raise ServiceManagerError(
            "no systemd user manager answers here "
            f"({(answer.stderr or answer.stdout).strip() or 'systemctl --user failed'})",
            "any nbdeploy command (or %load_ext nbdeploy) starts the daemon and brings "
            "deployments back",
        )
    folder = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd/user"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{unit_name(home)}.service"
    path.write_text(systemd_unit(home), encoding="utf-8")
    client.shutdown()  # systemd's daemon takes over; what runs is adopted
    for command in (("daemon-reload",), ("enable", "--now", path.name)):
        done = _systemctl(systemctl, *command)
        if done.returncode != 0:
            raise ServiceManagerError(
                f"systemctl --user {' '.join(command)} failed: {done.stderr.strip()}",
                f"the unit is written at {path}",
            )
    return f"installed {path}; the daemon now starts at login and boot"


def _systemctl(systemctl: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemctl, "--user", *arguments],
        capture_output=True,
        text=True,
        timeout=SYSTEMCTL_TIMEOUT_SECONDS,
        check=False,
    )
