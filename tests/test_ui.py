"""The demo page (service/ui.py, service/static/): its files over HTTP, and a real headless Chromium
that uses it against a real server, same-origin and from another origin that CORS allows."""

from __future__ import annotations

import functools
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.ui import PAGE_FILES, PUBLIC_PATHS
from tests.conftest import COMMITTED_MODELS, ROOT, Server

KEY = "page-test-key"
SENTENCE = "A little girl in a pink dress is running through the park with her dog."
STATIC = ROOT / "service" / "static"
SCREENSHOT = Path(os.environ.get("SEQSERVE_UI_SCREENSHOT", ROOT / "reports" / "ui" / "page.png"))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Servers:
    api: Server  # seqserve, with an API key and CORS for the static origin
    static_url: str  # the same page files from a plain file server: another origin


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    static = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(STATIC)))
    threading.Thread(target=static.serve_forever, daemon=True).start()
    static_url = f"http://127.0.0.1:{static.server_address[1]}"
    api = Server(COMMITTED_MODELS, api_keys=f'["{KEY}"]', cors_origins=f'["{static_url}"]',
                 warmup="false").wait_ready()
    yield Servers(api, static_url)
    api.stop()
    static.shutdown()


# --- the files over HTTP -----------------------------------------------------------------------
def test_page_files_ship_and_reference_only_each_other() -> None:
    assert {"index.html", "app.js", "style.css"} <= set(PAGE_FILES)
    html = PAGE_FILES["index.html"][0].decode()
    local = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {"style.css", "app.js"} <= set(local)
    for ref in local:  # nothing from another host: the page must work offline
        assert ref in PAGE_FILES or ref.startswith(("../", "data:")), ref  # "../": the server's, beside /ui/


def test_root_redirects_and_page_files_need_no_key(servers: Servers) -> None:
    url = servers.api.url
    r = httpx.get(f"{url}/")
    assert r.status_code == 307 and r.headers["location"] == "ui/"  # relative: it keeps a proxy's prefix
    r = httpx.get(f"{url}/ui/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["referrer-policy"] == "no-referrer"  # its address may name a server (?api=)
    for name in PAGE_FILES:
        assert httpx.get(f"{url}/ui/{name}").status_code == 200, name
    assert httpx.get(f"{url}/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert "/ui/app.js" in PUBLIC_PATHS
    head = httpx.head(f"{url}/ui/")  # uptime monitors and link checkers ask with HEAD
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"].startswith("text/html")
    assert head.headers["content-length"] == r.headers["content-length"]


def test_only_the_exact_page_paths_are_public(servers: Servers) -> None:
    url = servers.api.url
    for path in ("/ui/app.jsx", "/ui/app.js/x", "/ui/missing.js", "/uix", "/v1/models", "/docs", "/v2"):
        assert httpx.get(f"{url}{path}").status_code == 401, path
    assert httpx.post(f"{url}/ui/app.js").status_code == 401  # exempt for GET and HEAD only
    # with the key an unknown page file is an ordinary 404
    r = httpx.get(f"{url}/ui/missing.js", headers={"X-API-Key": KEY})
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_a_preflight_needs_no_key_and_a_401_carries_cors_headers(servers: Servers) -> None:
    url, origin = servers.api.url, servers.static_url
    r = httpx.options(f"{url}/v1/translate", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "content-type,x-api-key"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    r = httpx.get(f"{url}/v1/models", headers={"Origin": origin})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin


# --- a real browser ------------------------------------------------------------------------------
def _chromium() -> str:
    path = os.environ.get("SEQSERVE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        message = "needs Debian's chromium and the playwright package (.ci/run installs both)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the browser test, never skip it
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Debian's build, not a downloaded one: Playwright drives it over the DevTools protocol
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


def _open(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" and "401" not in msg.text else None)
    page.goto(url)
    return page, problems


def _connect(page: Any) -> None:
    page.fill("#api-key", KEY)
    page.click("#connect")
    page.wait_for_selector(".model[data-model='translate-en-de']")
    page.wait_for_selector(".model[data-model='sentiment']")


def _translate_in_page(page: Any, beam_size: int, nbest: int | None = None) -> dict[str, Any]:
    page.fill("#source", SENTENCE)
    page.select_option("#beam-size", str(beam_size))
    page.select_option("#nbest", str(nbest or ""))
    # how many rows each DOM update added: a streamed heatmap grows over several updates
    page.evaluate("""() => {
        window.rowBatches = [];
        new MutationObserver(records => window.rowBatches.push(
            records.flatMap(r => [...r.addedNodes]).filter(n => n.tagName === 'TR').length
        )).observe(document.getElementById('heatmap'), {childList: true, subtree: true});
    }""")
    page.click("#translate")
    page.wait_for_selector("#heatmap[data-complete='true']", timeout=30_000)
    return page.evaluate("""() => ({
        rowBatches: window.rowBatches.filter(n => n > 0),
        translation: document.getElementById('translation').textContent,
        nbest: [...document.querySelectorAll('#nbest-list li')].map(li => li.firstChild.textContent),
        sources: [...document.querySelectorAll('#heatmap thead th span')].map(s => s.title),
        targets: [...document.querySelectorAll('#heatmap tbody th span')].map(s => s.title),
        cells: [...document.querySelectorAll('#heatmap tbody td')].map(
            c => [Number(c.dataset.row), Number(c.dataset.col), Number(c.dataset.weight)]),
    })""")


def _api_translation(url: str, beam_size: int, **options: Any) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/translate", headers={"X-API-Key": KEY}, timeout=30,
                   json={"text": SENTENCE, "beam_size": beam_size, "return_attention": True, **options})
    assert r.status_code == 200, r.text
    return r.json()


def _check_heatmap(shown: dict[str, Any], api: dict[str, Any]) -> None:
    assert shown["translation"] == api["translation"]
    assert shown["sources"] == api["source_tokens"] and shown["targets"] == api["target_tokens"]
    matrix = api["attention"]
    assert len(shown["cells"]) == len(matrix) * len(matrix[0]) > 0
    for row, col, weight in shown["cells"]:
        assert weight == matrix[row][col], (row, col)


def test_browser_translates_draws_the_attention_and_classifies(browser: Any, servers: Servers) -> None:
    url = servers.api.url
    page, problems = _open(browser, f"{url}/")
    assert page.url == f"{url}/ui/"
    page.wait_for_selector("#error:not([hidden])")  # no key yet: the page says what is missing
    assert "API key" in page.text_content("#error")
    _connect(page)
    assert page.is_hidden("#error")
    models = page.text_content("#models")
    assert "translate-en-de" in models and "v1" in models and "CPU" in models
    # each model says what it is for, in its card's words: the translator that it knows captions
    about = page.text_content(".model[data-model='translate-en-de'] .about")
    assert "image captions" in about and "translates poorly" in about

    shown = _translate_in_page(page, beam_size=1)  # greedy: streamed row by row
    _check_heatmap(shown, _api_translation(url, beam_size=1))
    assert len(shown["rowBatches"]) > 1, shown["rowBatches"]

    page.hover("#heatmap td[data-row='0'][data-col='0']")
    readout = page.text_content("#readout")
    assert "weight" in readout and shown["targets"][0].lstrip("\u2581") in readout

    page.fill("#sentiment-text", "A gorgeous, witty and deeply moving film.")
    page.click("#classify")
    page.wait_for_selector("#sentiment-out:not([hidden])")
    bars = page.evaluate("() => Object.fromEntries([...document.querySelectorAll('#probabilities .bar')]"
                         ".map(b => [b.dataset.label, Number(b.dataset.probability)]))")
    r = httpx.post(f"{url}/v1/sentiment", headers={"X-API-Key": KEY},
                   json={"text": page.input_value("#sentiment-text")})
    assert bars == r.json()["probabilities"]
    assert r.json()["label"] in page.text_content("#sentiment-label")
    # a review over the model's subword limit: scored by its sentences, and the page says so
    page.fill("#sentiment-text", " ".join(["The first act drags, and the dialogue is often clumsy.",
                                           "But the second half is a triumph of acting and music."] * 12))
    page.click("#classify")
    page.wait_for_selector("#sentiment-meta:has-text('the mean of 24 sentences')")

    # a refused text: its panel's error, and no earlier answer left beside it as if it were its own
    page.fill("#sentiment-text", "   ")
    page.click("#classify")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error").startswith("Sentiment: ") and page.is_hidden("#sentiment-out")
    assert page.is_visible("#translation-out")  # the other panel's answer stays
    # a pasted text over the server's limit is refused by the server, not cut by the page unseen
    page.fill("#sentiment-text", "")
    page.focus("#sentiment-text")
    page.keyboard.insert_text("A fine film. " * 160)  # 2,080 characters, as a paste
    page.click("#classify")
    page.wait_for_selector("#error:has-text('2080 characters; at most 2000')")
    problems[:] = [p for p in problems if "status of 422" not in p]  # the browser logs the refusal

    page.hover("#heatmap td[data-row='1'][data-col='1']")  # the picture shows a hovered cell
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    print(f"screenshot: {SCREENSHOT}")
    assert problems == []
    page.close()


def test_browser_translates_a_pasted_paragraph_without_drawing_a_huge_attention_map(browser: Any,
                                                                                    servers: Servers) -> None:
    """A page of text: every sentence translated (one caption a line), as the API does it; the
    attention map (a cell per subword pair: 16 s of a frozen tab for 2,000 characters) is not drawn."""
    url = servers.api.url
    page, problems = _open(browser, f"{url}/")
    _connect(page)
    paragraph = "\n".join([SENTENCE, "Two dogs play in the snow.", "A woman is cooking in a kitchen."] * 8)
    page.fill("#source", paragraph)
    page.select_option("#beam-size", "1")
    page.click("#translate")
    page.wait_for_selector("#heatmap[data-complete='true']", state="attached", timeout=60_000)  # empty: hidden
    r = httpx.post(f"{url}/v1/translate", headers={"X-API-Key": KEY}, timeout=60,
                   json={"text": paragraph, "beam_size": 1})
    assert page.text_content("#translation") == r.json()["translation"]
    assert r.json()["translation"].count("Schnee") == 8  # no sentence dropped
    assert page.inner_text("#translation").count("\n") == 23  # shown one line a line, as typed
    assert page.locator("#heatmap tbody td").count() == 0 and "No attention map" in page.text_content("#readout")
    # short, but so many sentences that the server refuses its map (422 return_attention): translated without
    page.fill("#source", "Go. " * 150)
    page.click("#translate")
    page.wait_for_function("() => document.getElementById('translation').textContent.split('.').length > 100",
                           timeout=60_000)
    page.wait_for_selector("#heatmap[data-complete='true']", state="attached", timeout=60_000)
    assert page.is_hidden("#error") and page.locator("#heatmap tbody td").count() == 0
    # no words at all: kept as typed, and the readout says why there is no map
    page.fill("#source", "\U0001f60a \U0001f44d")
    page.click("#translate")
    page.wait_for_function("() => document.getElementById('translation').textContent === '\U0001f60a \U0001f44d'",
                           timeout=60_000)
    page.wait_for_selector("#heatmap[data-complete='true']", state="attached", timeout=60_000)
    assert page.text_content("#translation") == "\U0001f60a \U0001f44d" and page.is_hidden("#error")
    assert "Nothing was translated" in page.text_content("#readout")
    problems[:] = [p for p in problems if "status of 422" not in p]  # the browser logs the refused first try
    assert problems == []
    page.close()


def test_the_page_works_by_keyboard_at_320_px_and_tells_a_screen_reader(browser: Any, servers: Servers) -> None:
    """WCAG 2.2 AA as an outside tester checked it: the page scrolled sideways at 320 px once a map was
    drawn (1.4.10), the text areas had no name (4.1.2), answers were never announced (4.1.3), a
    disabled button dropped the keyboard focus, and the map could be read by mouse only (2.1.1)."""
    url = servers.api.url
    page, problems = _open(browser, f"{url}/")
    page.set_viewport_size({"width": 320, "height": 640})  # 1280 px at 400% zoom
    _connect(page)
    source = page.get_by_role("textbox", name="English text (Ctrl+Enter translates)")
    source.fill(SENTENCE)
    source.press("Control+Enter")  # sends; Enter alone is a new line
    page.wait_for_selector("#heatmap[data-complete='true']", timeout=30_000)
    translation = page.text_content("#translation")
    assert translation and page.text_content("#status") == f"German: {translation}"
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width  # only the map's own box scrolls
    assert page.evaluate("() => document.activeElement.id") == "source"

    # the button's busy state, seen by the changes to it: a translation answered within one of the
    # wait's polls (a frame) was busy and idle again before a poll looked (a flaky CI run)
    page.evaluate("""() => {
        const button = document.getElementById('translate');
        window.translateWasBusy = false;
        new MutationObserver((changes) => {
            if (changes.some((c) => c.oldValue === 'true') || button.getAttribute('aria-disabled') === 'true')
                window.translateWasBusy = true;
        }).observe(button, {attributes: true, attributeFilter: ['aria-disabled'], attributeOldValue: true});
    }""")
    page.focus("#translate")
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.translateWasBusy")
    page.wait_for_function("() => !document.getElementById('translate').hasAttribute('aria-disabled')",
                           timeout=30_000)
    assert page.evaluate("() => document.activeElement.id") == "translate"  # not dropped to the body

    page.focus("#heatmap td[data-row='0'][data-col='0']")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    focused = page.evaluate("() => [document.activeElement.dataset.row, document.activeElement.dataset.col, "
                            "document.activeElement.dataset.weight]")
    assert focused[:2] == ["1", "1"]
    assert f"weight {float(focused[2]):.4f}" in page.text_content("#readout")
    assert page.locator("#heatmap td[tabindex='0']").count() == 1  # one Tab stop for the whole map

    text = page.get_by_role("textbox", name="English text (Ctrl+Enter classifies)")
    text.fill("   ")
    text.press("Control+Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert text.get_attribute("aria-invalid") == "true" and text.get_attribute("aria-describedby") == "error"
    text.fill("A gorgeous, witty and deeply moving film.")
    text.press("Control+Enter")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Sentiment: ')")
    assert text.get_attribute("aria-invalid") is None
    problems[:] = [p for p in problems if "status of 422" not in p]
    assert problems == []
    page.close()


def test_browser_page_from_another_origin_calls_the_api_with_the_key(browser: Any, servers: Servers) -> None:
    url = servers.api.url
    page, problems = _open(browser, f"{servers.static_url}/index.html?api={url}")
    _connect(page)
    shown = _translate_in_page(page, beam_size=5, nbest=3)  # beam search: the rows come with the result
    api = _api_translation(url, beam_size=5, num_hypotheses=3)
    _check_heatmap(shown, api)
    assert shown["nbest"] == [h["translation"] for h in api["hypotheses"]] and len(shown["nbest"]) == 3
    page.fill("#max-length", "2")  # a translation cut at its length limit says so
    page.click("#translate")
    page.wait_for_selector("#translation-meta:has-text('cut at the length limit')", timeout=30_000)
    page.fill("#max-length", "")

    page.check("#sampling")  # a seeded sample is the API's sample for the same seed
    page.fill("#topk", "20")
    page.fill("#temperature", "1.5")
    page.fill("#seed", "7")
    page.click("#translate")
    page.wait_for_selector("#heatmap[data-complete='true']", timeout=30_000)
    sampled = _api_translation(url, 1, sampling_topk=20, sampling_temperature=1.5, seed=7)
    assert page.text_content("#translation") == sampled["translation"]
    assert "seed 7" in page.text_content("#translation-meta")
    page.uncheck("#sampling")  # the beam size chosen before sampling comes back
    assert page.input_value("#beam-size") == "5" and not page.is_disabled("#beam-size")
    assert problems == []
    page.close()


def test_a_key_is_never_sent_to_a_server_it_was_not_typed_for(browser: Any, servers: Servers) -> None:
    page, _ = _open(browser, f"{servers.api.url}/ui/")
    _connect(page)  # the key, typed for this server, is remembered in the tab
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("x-api-key"))))
    page.goto(f"{servers.api.url}/ui/?api={servers.static_url}")  # a link that names another server
    page.wait_for_function(f"() => document.getElementById('api-base').value === '{servers.static_url}'")
    page.wait_for_timeout(500)
    # not called until the user has seen its address and pressed Connect: a crafted link had the page
    # ask, in its own words, for the key on behalf of a stranger's server (a security review)
    assert not [url for url, _ in sent if url.startswith(servers.static_url)]
    assert f"another server, {servers.static_url}. Press Connect" in page.text_content("#models")
    assert page.input_value("#api-key") == ""
    page.click("#connect")
    page.wait_for_timeout(500)
    to_other = [key for url, key in sent if url.startswith(servers.static_url + "/v1/")]
    assert to_other and not any(to_other)  # it called that server, without the key
    page.goto(f"{servers.api.url}/ui/?api=javascript:document.title='x'//")  # only http(s) is a server
    page.click("#connect")
    assert page.text_content("#error") == "The server address must be an http:// or https:// URL."
    assert page.get_attribute("#docs-link", "href") == "../docs"
    page.goto(f"{servers.api.url}/ui/")  # back to the server the key is for
    page.wait_for_selector(".model[data-model='sentiment']")
    assert page.input_value("#api-key") == KEY
    page.close()


def test_the_api_docs_render_offline(browser: Any, committed_server: Server) -> None:
    """/docs (Swagger UI) and /redoc load their scripts from the server, not a CDN: with every other
    host unreachable, Swagger UI renders the OpenAPI 3.1 document with its operations, needing
    nothing from outside, and ReDoc renders too."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith(committed_server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(f"{committed_server.url}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "seqserve" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector("#operations-v1-sentiment_v1_sentiment_post, .opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/v1/sentiment" in paths and any(p.startswith("/v2/models/") for p in paths)
    assert not page.locator(".swagger-ui .errors-wrapper").count()  # Swagger UI 4 could not read 3.1
    assert outside == []
    page.goto(f"{committed_server.url}/redoc")  # renders; only its fonts and a logo come from outside
    page.wait_for_selector("h1", timeout=30_000)
    assert "seqserve" in page.inner_text("h1")
    page.close()
