"""The playable /demo page (issue 6), in a real headless Chromium against a real server.

The server runs ``python -m serving --demo`` on loopback with a scripted bundle; Debian's
``/usr/bin/chromium`` is driven by Playwright (nothing is downloaded). The browser tests skip,
saying why, when either is missing.

Run as a script, this module writes the README's screenshot of the page mid-fight::

    .venv/bin/python -m tests.test_demo_page serving/static/demo.png
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from serving.bundle import load_bundle, write_scripted_bundle
from serving.settings import Settings, settings_from_cli
from tests.server_helpers import (
    SECRET,
    ServerProcess,
    ThreadServer,
    auth,
    free_port,
    move_request,
    outcome,
    sqlite_url,
    start_server,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SPEED = 4
"""The page's ?speed=: the fight runs four times faster than a person would play it."""
WAIT_MS = 20_000
"""How long a condition on the page may take before the test fails."""
KEY_PAUSE_MS = 120
"""Between two scripted key presses, as a (fast) person types."""
DUEL_MOVES = ["attack", "defend", "special_move"]
SCRIPT = ("KeyJ", "KeyK", "Space", "KeyK", "KeyH", "KeyK", "KeyJ", "KeyL")
"""Attack, dodge, attack, dodge, heavy attack, dodge, attack, block: a dodger's pattern."""
DODGER = ("KeyK",)
"""Only dodges."""
BRAWLER = ("KeyJ", "Space", "KeyH", "KeyJ", "KeyL", "KeyJ")
"""Attacks and a block, never a dodge: the screenshot's player (the reactive boss answers a
dodger with nothing but special_move)."""


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent: install Debian's chromium package (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401, PLC0415 (optional: only these tests need it)
    except ImportError:
        return "the playwright package is absent: pip install -e '.[dev]'"
    return None


needs_browser = pytest.mark.skipif(browser_missing() is not None,
                                   reason=browser_missing() or "")


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``python -m serving --demo`` with a scripted duel bundle and a fresh SQLite database."""
    tmp = tmp_path_factory.mktemp("demo")
    server = start_server(tmp, write_scripted_bundle(tmp / "bundle"), args=["--demo"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page_factory() -> Iterator[Any]:
    """A function opening a new page of a headless Chromium (closed after the module)."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (optional dependency)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield lambda: browser.new_page(viewport={"width": 1040, "height": 900})
        browser.close()


def demo_token(url: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/demo/token", timeout=10.0)
    assert answer.status_code == 200, answer.text
    return answer.json()


# --- demo mode on the server ----------------------------------------------------------------


def test_demo_mode_registers_the_demo_game_and_hands_out_tokens_for_it(
        demo_server: ServerProcess) -> None:
    info = demo_token(demo_server.url)
    assert info["game_id"] == "demo"
    assert info["vocabulary"]["boss_actions"] == DUEL_MOVES
    assert info["game"]["boss"]["name"] == "Warden"
    assert "early_battle" in info["battle_phases"]
    stats = httpx.get(f"{demo_server.url}/api/v1/games/demo/realtime-stats",
                      headers=auth(info["access_token"]), timeout=10.0)
    assert stats.status_code == 200, stats.text
    again = httpx.post(f"{demo_server.url}/api/v1/games/register", timeout=10.0, json={
        "game_id": "demo", "name": "x", "vocabulary": {"boss_actions": DUEL_MOVES}})
    assert again.status_code == 409, again.text
    page = httpx.get(f"{demo_server.url}/demo", timeout=10.0)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/api/v1/ws/" in page.text
    for outside in ("http://", "https://", "src="):  # works offline: nothing from elsewhere
        assert outside not in page.text


def test_without_demo_mode_the_page_is_404_and_says_how_to_turn_it_on(tmp_path: Path) -> None:
    settings = Settings(port=free_port(), database_url=sqlite_url(tmp_path), secret_key=SECRET)
    server = ThreadServer(settings, [load_bundle(write_scripted_bundle(tmp_path / "bundle"))])
    try:
        for path in ("/demo", "/demo/token"):
            answer = httpx.get(f"{server.url}{path}", timeout=10.0)
            assert answer.status_code == 404, path
            assert "--demo" in answer.json()["detail"]
            assert "BOSSLAB_DEMO=true" in answer.json()["detail"]
        free = httpx.post(f"{server.url}/api/v1/games/register", timeout=10.0, json={
            "game_id": "demo", "name": "mine", "vocabulary": {"boss_actions": DUEL_MOVES}})
        assert free.status_code == 201, "without --demo the game id `demo` is not taken"
    finally:
        server.stop()


def test_the_demo_game_and_its_outcomes_carry_over_a_restart(tmp_path: Path) -> None:
    bundle = load_bundle(write_scripted_bundle(tmp_path / "bundle"))
    settings = Settings(port=free_port(), database_url=sqlite_url(tmp_path), secret_key=SECRET,
                        demo=True)
    server = ThreadServer(settings, [bundle])
    try:
        games = f"{server.url}/api/v1/games/demo"
        headers = auth(demo_token(server.url)["access_token"])
        move = httpx.post(f"{games}/boss-action", json=move_request(), headers=headers,
                          timeout=10.0)
        assert move.status_code == 200, move.text
        stored = httpx.post(f"{games}/action-outcome", json=outcome(move.json()["action_id"]),
                            headers=headers, timeout=10.0)
        assert stored.status_code == 200, stored.text
    finally:
        server.stop()
    server = ThreadServer(settings, [bundle])  # the game `demo` exists: not registered again
    try:
        headers = auth(demo_token(server.url)["access_token"])
        stats = httpx.get(f"{server.url}/api/v1/games/demo/realtime-stats", headers=headers,
                          timeout=10.0).json()
        assert (stats["actions_served"], stats["outcomes_stored"]) == (1, 1)
    finally:
        server.stop()


def test_demo_mode_is_refused_in_production(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    strong = "s" * 48
    with pytest.raises(ValidationError, match="production mode refuses demo mode"):
        Settings(production=True, demo=True, secret_key=strong)
    with pytest.raises(SystemExit) as exit_info:
        settings_from_cli(["--demo", "--production", "--secret-key", strong])
    assert exit_info.value.code == 2
    assert "Drop --demo" in capsys.readouterr().err
    monkeypatch.setenv("BOSSLAB_DEMO", "true")
    monkeypatch.setenv("BOSSLAB_PRODUCTION", "true")
    monkeypatch.setenv("BOSSLAB_SECRET_KEY", strong)
    with pytest.raises(ValidationError, match="BOSSLAB_DEMO"):
        Settings()
    assert Settings(production=False).demo, "BOSSLAB_DEMO=true turns demo mode on"


# --- a person fights the boss in the browser ------------------------------------------------


@needs_browser
def test_a_person_fights_the_served_boss_in_the_browser(demo_server: ServerProcess,
                                                        page_factory: Any) -> None:
    vocabulary = demo_token(demo_server.url)["vocabulary"]["boss_actions"]
    page = page_factory()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    open_demo(page, demo_server.url)
    assert page.inner_text("#boss-name") == "Warden"
    assert page.inner_text("#boss-hp-text") == "264 / 264"  # 720 x 1.1 (normal) / 3

    fight(page, until="Number(document.body.dataset.acked) >= 5")

    view = page.evaluate("Object.assign({}, document.body.dataset)")
    assert int(view["moves"]) >= 5 and int(view["acked"]) >= 5
    assert float(view["bossHp"]) < 264, "the scripted attacks landed"
    assert page.inner_text("#last-move") in vocabulary
    shown = [line.split("boss: ", 1)[1].split(" ", 1)[0]
             for line in page.inner_text("#log").splitlines() if " boss: " in line]
    assert shown and set(shown) <= set(vocabulary), shown
    assert errors == []
    check_server_saw_the_fight(demo_server.url, view, vocabulary)


@needs_browser
def test_the_player_context_comes_from_what_the_player_does(demo_server: ServerProcess,
                                                            page_factory: Any) -> None:
    page = page_factory()
    open_demo(page, demo_server.url)
    fight(page, until="document.body.dataset.style === 'evasive' && "
                      "document.body.dataset.frequentActions === 'dodge'", script=DODGER)
    acked = int(page.evaluate("document.body.dataset.acked"))  # two more: the move asked
    fight(page, until=f"Number(document.body.dataset.acked) >= {acked + 2}", script=DODGER)

    view = page.evaluate("Object.assign({}, document.body.dataset)")
    token = demo_token(demo_server.url)["access_token"]
    profile = httpx.get(f"{demo_server.url}/api/v1/games/demo/sessions/{view['session']}"
                        "/profile", headers=auth(token), timeout=10.0).json()
    assert profile["movement_styles"].get("evasive", 0) >= 1, profile  # stored with a move


@needs_browser
def test_the_page_reconnects_after_a_server_restart_and_keeps_its_session(
        tmp_path: Path, page_factory: Any) -> None:
    bundle = load_bundle(write_scripted_bundle(tmp_path / "bundle"))
    settings = Settings(port=free_port(), database_url=sqlite_url(tmp_path), secret_key=SECRET,
                        demo=True)
    server = ThreadServer(settings, [bundle])  # restarts in a second, without imports
    page = page_factory()
    open_demo(page, server.url)
    fight(page, until="Number(document.body.dataset.acked) >= 2")
    session = page.evaluate("document.body.dataset.session")

    server.stop()  # sockets closed with 1012
    page.wait_for_function("document.body.dataset.state !== 'connected'", timeout=WAIT_MS)
    server = ThreadServer(settings, [bundle])
    try:
        page.wait_for_function("document.body.dataset.state === 'connected'", timeout=WAIT_MS)
        acked = int(page.evaluate("document.body.dataset.acked"))
        fight(page, until=f"Number(document.body.dataset.acked) >= {acked + 2}")
        view = page.evaluate("Object.assign({}, document.body.dataset)")
        assert view["session"] == session, "the page reconnects to the same player session"
        page.wait_for_function("document.getElementById('pending').textContent === '0'",
                               timeout=WAIT_MS)  # every outcome acknowledged, none lost
        check_server_saw_the_fight(server.url, view, DUEL_MOVES)
    finally:
        server.stop()


def open_demo(page: Any, url: str, speed: float = SPEED) -> None:
    """Load /demo and wait for its socket's ``status``."""
    page.goto(f"{url}/demo?speed={speed}")
    page.wait_for_function("document.body.dataset.state === 'connected'", timeout=WAIT_MS)


def fight(page: Any, until: str, script: tuple[str, ...] = SCRIPT) -> None:
    """Play ``script`` over and over, closing in on the boss first, until ``until`` holds on
    the page (a JavaScript expression)."""
    for _ in range(40):
        approach(page)
        for key in script:
            page.keyboard.press(key)
            page.wait_for_timeout(KEY_PAUSE_MS)
        if page.evaluate(until):
            return
    page.wait_for_function(until, timeout=WAIT_MS)


def approach(page: Any) -> None:
    """Walk right until the boss is within the player's reach (2.5 m)."""
    page.keyboard.down("ArrowRight")
    try:
        page.wait_for_function("Number(document.body.dataset.distance) < 2",
                               timeout=WAIT_MS)
    finally:
        page.keyboard.up("ArrowRight")


def check_server_saw_the_fight(url: str, view: dict[str, str], vocabulary: list[str]) -> None:
    """The moves and outcomes the page reports are in the server's stats and the profile."""
    token = demo_token(url)["access_token"]
    stats = httpx.get(f"{url}/api/v1/games/demo/realtime-stats", headers=auth(token),
                      timeout=10.0).json()
    assert stats["actions_served"] >= int(view["moves"]) > 0
    assert stats["outcomes_stored"] >= int(view["acked"]) > 0
    assert set(stats["action_mix"]) <= set(vocabulary)
    profile = httpx.get(f"{url}/api/v1/games/demo/sessions/{view['session']}/profile",
                        headers=auth(token), timeout=10.0).json()
    assert profile["lessons"] >= int(view["acked"])  # replayed from storage after a restart


# --- the README's screenshot ----------------------------------------------------------------


def screenshot(out: Path) -> None:
    """Play the page at normal speed against a fresh demo server; save it mid-fight, paused
    while the boss telegraphs a move, as a PNG."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (optional dependency)

    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        server = start_server(tmp, write_scripted_bundle(tmp / "bundle"), args=["--demo"])
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                     args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1040, "height": 900})
                open_demo(page, server.url, speed=1)
                fight(page, until="Number(document.body.dataset.acked) >= 8 && "
                                  "Number(document.body.dataset.playerHp) > 40", script=BRAWLER)
                page.wait_for_function("document.body.dataset.bossStage === 'windup' && "
                                       "document.body.dataset.bossMove !== 'defend'",
                                       timeout=WAIT_MS)
                page.keyboard.press("KeyP")  # pause the telegraph for the picture
                box = page.locator("main").bounding_box()
                assert box is not None, "the page has no <main>"
                page.screenshot(path=str(out), clip={
                    "x": box["x"] - 16, "y": box["y"] - 12,
                    "width": box["width"] + 32, "height": box["height"] + 24})
                print(json.dumps(page.evaluate("Object.assign({}, document.body.dataset)")))
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "serving/static/demo.png"))
